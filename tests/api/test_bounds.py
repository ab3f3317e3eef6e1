"""A hostile client's slow and many connections, against a real grid: headers that do
not come are cut, and one address holds a bounded number of connections."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Grid


def closed(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: aborted by the grid
        return True


def test_half_requests_are_cut_and_one_address_holds_a_bounded_number() -> None:
    grid = Grid(
        OMNIGRID_HEADER_TIMEOUT_S="2",
        OMNIGRID_MAX_CLIENT_CONNECTIONS="40",
        OMNIGRID_TRUSTED_CLIENTS="",  # loopback counted like any address, for the test
    )
    socks: list[socket.socket] = []
    try:
        for _ in range(100):  # two processes, 40 each at most
            s = socket.create_connection(("127.0.0.1", grid.port))
            s.sendall(b"GET /v1/carts/u1 HTTP/1.1\r\nHost: gr")  # and never the rest
            socks.append(s)
        time.sleep(0.5)
        refused = sum(closed(s) for s in socks)
        assert refused >= 20, refused  # at most 80 held
        time.sleep(2.5)
        assert all(closed(s) for s in socks)  # every half request cut by now
        with httpx.Client(base_url=grid.url, timeout=5) as c:  # the grid serves the rest
            assert c.get("/v1/carts/u1").status_code == 200
    finally:
        for s in socks:
            s.close()
        grid.stop()


def self_signed(folder: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certfile), str(keyfile)


def trusting(certfile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certfile)


class TlsGrid(Grid):
    ca = ""  # the certificate to trust

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.url = self.url.replace("http://", "https://")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"omnigrid serve exited with {self.proc.returncode}")
            try:
                ready = httpx.get(self.url + "/readyz", timeout=2, verify=trusting(self.ca))
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError("the grid did not come up over TLS")


def test_the_grid_serves_https_with_a_configured_certificate(tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    TlsGrid.ca = certfile
    grid = TlsGrid(OMNIGRID_TLS_CERTFILE=certfile, OMNIGRID_TLS_KEYFILE=keyfile)
    try:
        with httpx.Client(base_url=grid.url, verify=trusting(certfile), timeout=10) as c:
            assert c.get("/v1/carts/u1").status_code == 200
        plain = grid.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):  # no clear HTTP on that port
            httpx.get(plain + "/v1/carts/u1", timeout=3)
    finally:
        grid.stop()
