"""An nginx front for one machine: it holds the shoppers' connections and sends each
request to the shard process that owns its key.

Why: a process holds at most ~19,000 connections here (the hard open-file limit is
20,000), so 100,000 shoppers on the grid alone need six shard processes, and a
request reaches its owner's process one time in six: the other five are forwarded
over a peer link, which costs both processes (BENCHMARKS.md, issue 16). nginx's
workers hold connections for a few kB each in C; the shards (as few as the CPU
needs) listen on Unix sockets only, and njs reads each request's key from its path
(the kinds' own route templates), hashes it to its slot (CRC16, as actors/slots.py)
and picks the owner from the slot map, so the shard that takes a request owns it.

A stale map costs nothing but a forward: a shard still refuses a key it does not
own and the router inside sends it on. ``omnigrid serve`` rewrites the map and
reloads nginx when the map's version changes (gracefully: requests in flight
finish; the old workers close idle keep-alive connections, which clients reopen),
and starts nginx again if it dies. A path with no key in it (a checkout, a
stream, operations) goes to any shard. The configuration is written to
``<data dir>/front/`` at each start; the templates below are its source.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omnigrid.actors.declaration import Kind
from omnigrid.actors.slots import SLOT_COUNT, SlotMap
from omnigrid.api.http.validation import MAX_BODY_BYTES
from omnigrid.api.runtime.settings import Settings

NGINX = "nginx"
JS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"
UPSTREAM_KEEPALIVE = 256  # idle connections each nginx worker keeps to each shard
RESERVED_FDS = 200  # per worker, beside its connections: logs, sockets to the shards


def front_socket_path(port: int, shard_id: int) -> str:
    """Where a shard behind the front serves HTTP; stable across restarts, so nginx's
    configuration names it once."""
    return os.path.join(tempfile.gettempdir(), f"omnigrid-http-{port}-shard{shard_id}.sock")


def front_socket(path: str) -> socket.socket:
    """A listening Unix socket for the front (a restarted shard takes over its path)."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o660)
    sock.listen(4096)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True, slots=True)
class KeyRoute:
    """A path template that names an entity, as njs tests it: the path split on "/"
    has ``length`` parts, the literal ones at their places, the identifier at ``ident``."""

    length: int
    literals: tuple[tuple[int, str], ...]
    ident: int
    prefix: str  # the key is prefix + identifier ("cart:")


def key_routes(kinds: tuple[Kind, ...]) -> dict[str, list[KeyRoute]]:
    """The kinds' routes whose path holds their identifier, by the segment after the
    version ("carts")."""
    table: dict[str, list[KeyRoute]] = {}
    for kind in kinds:
        for route in kind.routes:
            parts = ["", *route.path.strip("/").split("/")]
            ident = "{" + kind.ident + "}"
            if ident not in parts or len(parts) < 3:
                continue
            literals = tuple((i, p) for i, p in enumerate(parts) if i and not p.startswith("{"))
            entry = KeyRoute(len(parts), literals, parts.index(ident), kind.name + ":")
            routes = table.setdefault(parts[2], [])
            if entry not in routes:
                routes.append(entry)
    return table


def render_js(slot_map: SlotMap, kinds: tuple[Kind, ...]) -> str:
    """The njs module: the slot map (one character per slot: '0' + owner) and the
    routes as code. njs copies a module's objects into every request it runs in, so
    the module holds none: a string and functions only (a table of RegExps cost
    nginx ~400 µs a request, this ~30 µs: BENCHMARKS.md)."""
    owners = "".join(chr(48 + o) for o in slot_map.owners)
    assert len(owners) == SLOT_COUNT
    cases = []
    for first, routes in key_routes(kinds).items():
        tests = []
        for r in routes:
            cond = " && ".join(
                [f"n == {r.length}", *(f"p[{i}] == {json.dumps(lit)}" for i, lit in r.literals)]
            )
            tests.append(f"        if ({cond}) return {json.dumps(r.prefix)} + p[{r.ident}];")
        cases.append(f"    case {json.dumps(first)}:\n" + "\n".join(tests) + "\n        break;")
    return (
        _JS.replace("@VERSION@", str(slot_map.version))
        .replace("@OWNERS@", owners)
        .replace("@CASES@", "\n".join(cases))
    )


_JS = """// written by omnigrid (api/runtime/front.py) for slot map version @VERSION@
var OWNERS = "@OWNERS@";

// the entity key a path names, or null
function key(uri) {
    var p = uri.split("/");
    var n = p.length;
    switch (p[2]) {
@CASES@
    }
    return null;
}

// CRC16 (XMODEM) of the key's UTF-8 bytes, as actors/slots.py
function crc16(key) {
    var crc = 0;
    for (var i = 0; i < key.length; i++) {
        var c = key.charCodeAt(i);
        if (c > 127) {
            return crc16bytes(Buffer.from(key));
        }
        crc = step(crc, c);
    }
    return crc;
}

function crc16bytes(bytes) {
    var crc = 0;
    for (var i = 0; i < bytes.length; i++) {
        crc = step(crc, bytes[i]);
    }
    return crc;
}

function step(crc, c) {
    crc ^= c << 8;
    for (var b = 0; b < 8; b++) {
        crc = (crc & 0x8000) ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
    return crc;
}

// the shard owning the request's key, or "any" for a path that names none
function shard(r) {
    var k = key(r.uri);
    return k === null ? "any" : String(OWNERS.charCodeAt(crc16(k) % 16384) - 48);
}

export default {shard};
"""


def render_conf(settings: Settings, shards: int, prefix: Path) -> str:
    """nginx's configuration for ``shards`` shard processes behind ``settings``' port(s)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = hard if hard != resource.RLIM_INFINITY else 65_536
    # each connection a shopper holds costs its worker one descriptor, and one more
    # while its request is with a shard (the kept upstream connections are shared)
    connections = max(1024, limit - RESERVED_FDS - UPSTREAM_KEEPALIVE * shards)
    sockets = [front_socket_path(settings.port, s) for s in range(shards)]

    # shorter than the shards' own keep-alive, so nginx never sends on a connection
    # the shard is closing
    upstream_idle = max(1, settings.keepalive_s // 2)

    def upstream(name: str, first: int | None) -> str:
        # the owner first; the others as backups while its socket refuses (a shard
        # restarting): they forward to the owner once it is back
        lines = []
        for s, path in enumerate(sockets):
            if first is None:
                lines.append(f"        server unix:{path} max_fails=0;")
            elif s == first:
                lines.append(f"        server unix:{path} max_fails=1 fail_timeout=1s;")
            else:
                lines.append(f"        server unix:{path} backup;")
        return (
            f"    upstream {name} {{\n"
            + "\n".join(lines)
            + f"\n        keepalive {UPSTREAM_KEEPALIVE};\n"
            + f"        keepalive_timeout {upstream_idle}s;\n"
            + "        keepalive_requests 1000000;\n    }\n"
        )

    upstreams = "".join(upstream(f"og_shard{s}", s) for s in range(shards))
    upstreams += upstream("og_shardany", None)
    ssl = " ssl" if settings.tls_certfile else ""
    listens = "".join(
        f"        listen {_listen_host(settings.host)}:{port}{ssl} reuseport backlog=4096;\n"
        for port in [settings.port, *settings.extra_port_list()]
    )
    tls = (
        f"        ssl_certificate {settings.tls_certfile};\n"
        f"        ssl_certificate_key {settings.tls_keyfile};\n"
        if settings.tls_certfile
        else ""
    )
    trusted = "".join(f"        {a} 0;\n" for a in settings.trusted_clients)
    limit_conn = (
        f"        limit_conn og_per_client {settings.max_client_connections};\n"
        if settings.max_client_connections > 0
        else ""
    )
    proxy = f"""            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            # answers flow as they are written (streams); they are small otherwise
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_send_timeout {max(1, round(settings.peer_timeout_s * 2))}s;
            # a connection error tries the next shard; nginx never sends a POST
            # again once it was sent, while GET, PUT and DELETE (idempotent in the
            # contract) may be
            proxy_next_upstream error;
            proxy_next_upstream_tries 2;
"""
    # nginx drops its workers to "nobody" when started as root; they must reach the
    # shards' sockets, which belong to the grid's user
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return f"""# written by omnigrid (api/runtime/front.py) at each start
{user}worker_processes {settings.front_workers};
worker_rlimit_nofile {limit};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
load_module {JS_MODULE};
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    js_import og from {prefix}/route.js;
    js_set $og_shard og.shard;
    geo $og_counted {{
        default 1;
{trusted}    }}
    map $og_counted $og_client {{
        0 "";
        1 $binary_remote_addr;
    }}
    limit_conn_zone $og_client zone=og_per_client:16m;
    limit_conn_status 429;
{upstreams}    server {{
{listens}{tls}{limit_conn}        keepalive_timeout {settings.keepalive_s}s;
        keepalive_requests 1000000;
        client_header_timeout {max(1, round(settings.header_timeout_s))}s;
        client_body_timeout {max(1, round(settings.header_timeout_s))}s;
        # the grid answers an oversized body itself, as a problem
        client_max_body_size {MAX_BODY_BYTES * 4};
        underscores_in_headers on;
        location / {{
            proxy_pass http://og_shard$og_shard;
            # a shard that has not answered by then is taken as down: 503 (long
            # enough for an audit of a large grid)
            proxy_read_timeout {max(120, round(settings.peer_timeout_s * 4))}s;
{proxy}        }}
        # event streams stay open for as long as the shopper watches
        location /v1/streams/ {{
            proxy_pass http://og_shardany;
            proxy_read_timeout 1d;
{proxy}        }}
        error_page 502 504 =503 @unavailable;
        location @unavailable {{
            default_type application/problem+json;
            return 503 '{_UNAVAILABLE}';
        }}
        # an address over its bound of connections (the grid's own 429s pass as
        # they are: nginx answers these itself)
        error_page 429 @overloaded;
        location @overloaded {{
            default_type application/problem+json;
            add_header Retry-After 1 always;
            return 429 '{_OVERLOADED}';
        }}
    }}
}}
"""


_UNAVAILABLE = json.dumps(
    {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "code": "unavailable",
        "detail": "no shard process answered; retry",
    }
)


_OVERLOADED = json.dumps(
    {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "code": "overloaded",
        "detail": "this address holds too many connections",
    }
)


def _listen_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class NginxFront:
    """nginx started for ``omnigrid serve``, its map rewritten on change."""

    def __init__(self, settings: Settings, kinds: tuple[Kind, ...]) -> None:
        if shutil.which(NGINX) is None or not os.path.exists(JS_MODULE):
            raise ValueError(
                "OMNIGRID_FRONT=nginx needs nginx and its njs module: "
                "apt-get install nginx-light libnginx-mod-http-js"
            )
        self.settings = settings
        self.kinds = kinds
        self.prefix = Path(settings.data_dir, "front").resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = -1
        self.shards = 0
        self._workers: list[int] = []

    def _write(self, slot_map: SlotMap) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        _replace(self.prefix / "route.js", render_js(slot_map, self.kinds))
        shards = slot_map.shard_count
        _replace(self.prefix / "nginx.conf", render_conf(self.settings, shards, self.prefix))
        self.version, self.shards = slot_map.version, shards

    def start(self, slot_map: SlotMap, timeout_s: float = 10.0) -> None:
        self._write(slot_map)
        conf = str(self.prefix / "nginx.conf")
        check = subprocess.run(
            [NGINX, "-t", "-q", "-p", str(self.prefix), "-c", conf],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration: {check.stderr.strip()}")
        self._end_orphans()
        self._end_earlier_master()
        self.proc = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", conf])
        deadline = time.monotonic() + timeout_s
        # nginx writes its pid once its ports are bound (another program holding the
        # port would answer a connection itself: not a sign that nginx listens)
        while not (self._pid_written() and _listening(self.settings.host, self.settings.port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.prefix / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx did not start: {log}")
            time.sleep(0.05)

    def _pid_written(self) -> bool:
        try:
            return self.proc is not None and int((self.prefix / "nginx.pid").read_text()) == (
                self.proc.pid
            )
        except (OSError, ValueError):
            return False

    def running(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        self._workers = _children(self.proc.pid)  # to end, should the master die alone
        return True

    def _end_orphans(self) -> None:
        """A master killed alone leaves its workers serving (and holding the ports with
        the old map): end them before a new master starts."""
        for pid in self._workers:
            with contextlib.suppress(OSError):
                if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self._workers = []

    def _end_earlier_master(self) -> None:
        """An nginx an earlier ``omnigrid serve`` on this data directory left running
        (that process was killed outright): end it and its workers, or it would go on
        serving beside the new one with its old map."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.prefix / "nginx.pid").read_text())
            if str(self.prefix).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                for child in _children(pid):
                    with contextlib.suppress(OSError):
                        os.kill(child, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def follow(self, slot_map: SlotMap) -> bool:
        """Rewrite and reload if the map moved on; whether it did."""
        if slot_map.version <= self.version or self.proc is None:
            return False
        self._write(slot_map)
        self.proc.send_signal(signal.SIGHUP)  # a graceful reload: no request in flight is cut
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking requests, finish those in flight (nginx's graceful quit)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _replace(path: Path, text: str) -> None:
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(text)
    temp.replace(path)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
