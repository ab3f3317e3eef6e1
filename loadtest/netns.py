"""Several Ray nodes on one machine, each in a network namespace of its own.

A Ray node binds and dials its machine's interface address, and a second node is
refused on loopback (README, "Joining a Ray cluster"), so nodes on one machine
need addresses of their own: each node here is a namespace on a private /24,
joined to the root namespace by a bridge (the bridge's address is the root's on
that subnet). What runs in the root namespace and is needed by the nodes (a
Redis of the test's own, PostgreSQL through a forwarder) listens on the
bridge's address. Everything is made on ``up()`` and removed on ``down()``;
needs root (``ip netns``).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Netns:
    """``nodes`` namespaces on 10.213.<k>.0/24: node i is .i+1, the bridge .254."""

    def __init__(self, nodes: int) -> None:
        self.k = random.randint(1, 250)
        self.tag = f"og{self.k}"
        self.nodes = nodes
        self.bridge_ip = f"10.213.{self.k}.254"
        self.made = False

    def name(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def ip(self, i: int) -> str:
        return f"10.213.{self.k}.{i + 1}"

    def up(self) -> None:
        self.made = True
        bridge = f"{self.tag}b"
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(self.nodes):
            ns, outside, inside = self.name(i), f"{self.tag}v{i}", f"{self.tag}p{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{self.ip(i)}/24", "dev", inside)
            _ip("netns", "exec", ns, "ip", "link", "set", inside, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name(i), *argv]

    def pids(self, i: int) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.name(i)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def kill_node(self, i: int) -> int:
        """SIGKILL every process of node ``i`` (a node lost at once); how many."""
        pids = self.pids(i)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def down(self) -> None:
        if not self.made:
            return
        for i in range(self.nodes):
            self.kill_node(i)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", self.name(i))
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", f"{self.tag}v{i}")
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", f"{self.tag}b")


class Forward:
    """A TCP forwarder in the root namespace: ``listen`` (the bridge's address) to
    ``target`` (PostgreSQL on loopback), one thread a connection."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server((listen_host, 0))
        self.port = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


class RayNodes:
    """A Ray head in node 0 and a Ray node in each other namespace (token auth on)."""

    PORT = 6390

    def __init__(self, net: Netns) -> None:
        self.net = net
        self.temp = tempfile.mkdtemp(prefix="omnigrid-ray-")
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        self.env.pop("RAY_ADDRESS", None)
        self.env["RAY_AUTH_MODE"] = "token"
        # a token of its own: a fresh machine has no ~/.ray/auth_token until some local
        # Ray made one, and `ray start` does not make one
        self.env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        self.address = f"{net.ip(0)}:{self.PORT}"

    def start(self, count: int | None = None) -> None:
        """The head in node 0, then nodes 1 .. ``count`` - 1 (every namespace: None)."""
        for i in range(self.net.nodes if count is None else count):
            self.join(i)

    def join(self, i: int) -> None:
        """Ray on node ``i``: the head for 0, else a node joining it."""
        ray = shutil.which("ray")
        assert ray, "the ray command must be installed"
        where = (
            ["--head", "--port", str(self.PORT), "--include-dashboard=false"]
            if i == 0
            else ["--address", self.address]
        )
        argv = [ray, "start", *where, "--node-ip-address", self.net.ip(i)]
        argv += ["--num-cpus", "2", "--temp-dir", os.path.join(self.temp, f"node{i}")]
        subprocess.run(
            self.net.command(i, argv), env=self.env, check=True, capture_output=True, timeout=120
        )

    def wait_alive(self, count: int, timeout: float = 120.0) -> None:
        """Until Ray counts ``count`` live nodes."""
        ray = shutil.which("ray")
        assert ray
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                self.net.command(0, [ray, "status", "--address", self.address]),
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            active = out.split("Active:")[-1].split("Pending:")[0]
            if active.count("node_") == count:
                return
            assert time.monotonic() < deadline, out
            time.sleep(1)

    def stop(self) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)
