"""Every setting of a grid, with its environment variable and default."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_CHANNELS = ("miniprogram", "app", "h5", "wechat_oa", "pos", "web", "alipay", "kiosk")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    shards: int = 2
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    max_inflight: int = 4096  # requests in progress per process before 429
    max_pending: int = 10_000  # commands queued per destination shard before 429
    peer_timeout_s: float = 5.0  # a forwarded batch not answered by then is 503
    keepalive_s: int = 75  # HTTP keep-alive: longer than a shopper's think time
    namespace: str = "omnigrid"  # Ray namespace of the shard actors
    data_dir: str = "./data"  # the embedded journal's files (made absolute by the CLI)
    redis_url: str = ""  # journal in Redis Streams instead of the embedded store
    journal_sync: str = "normal"  # embedded journal: normal (survives process death) or full
    # an append unanswered by then is refused (a locked file) or settled (a stalled Redis)
    journal_timeout_s: float = 0.25
    # sync: journaled before the answer; async: answered first, journaled within 5 ms;
    # none: no journal, the write-behind alone (a crash loses up to one interval)
    durability: str = "sync"
    postgres_dsn: str = ""  # the store (system of record); else SQLite in data_dir
    writebehind_interval_s: float = 0.2  # how often dirty snapshots and events go to the store
    writebehind_batch: int = 5_000  # rows per statement to the store
    writebehind_max_queue: int = 500_000  # changes waiting for the store per shard before 503
    max_resident: int = 1_000_000  # entities per shard in memory before idle ones passivate
    extra_ports: str = ""  # more HTTP ports every process also serves ("8001,8002")
    max_streams: int = 20_000  # open event streams per process before 429
    stream_heartbeat_s: float = 15.0  # a comment line on idle streams, for proxies
    webhook_max_attempts: int = 8  # deliveries tried this often, then dead letters
    webhook_backoff_s: float = 1.0  # first retry after this, doubling each time
    webhook_timeout_s: float = 5.0  # a receiver that takes longer has failed this try
    log_level: str = "warning"
    # more entity kinds: modules that each define a KIND (actors/declaration.py),
    # importable by every grid process ("myshop.kinds.wishlist,myshop.kinds.review")
    kind_modules: tuple[str, ...] = ()
    # the key identifiers are hashed with (at least 16 characters); empty: the one in
    # data_dir/identity.key, made on first start. Every process of a grid needs the same.
    identity_secret: str = ""
    phone_region: str = "CN"  # the region of national phone numbers
    tiers: str = ""  # the tier table as JSON (GET /v1/tiers shows the shape); empty: default
    # an admin key known before any is stored: "<key_id>:<secret>" (OMNIGRID_BOOTSTRAP_KEY)
    bootstrap_key: str = ""
    # serve a non-loopback address with no key (every caller may do anything)
    insecure: bool = False
    # a request whose headers are not whole this long after its first byte is cut
    header_timeout_s: float = 10.0
    # connections one client address may hold per process (0: no bound), but for
    # trusted addresses (loopback: the load harness, a proxy on the host)
    max_client_connections: int = 4096
    trusted_clients: tuple[str, ...] = ("127.0.0.1", "::1")
    # HTTPS when both are set: a PEM certificate (chain) and its private key
    tls_certfile: str = ""
    tls_keyfile: str = ""
    # each channel's figures, sync lag, deliveries per change and alerts (off: to measure
    # what they cost; /v1/ops/sync then shows nothing)
    sync_monitoring: bool = True
    # a SIGTERM's clean stop (streams ended, requests finished, changes stored) takes
    # at most this; a second signal forces it
    stop_timeout_s: float = 30.0
    # changes kept in the event log (the sync log, stream resumes, timelines)
    sync_log_retention_s: float = 7 * 24 * 3600.0
    # slots one hand-over of a scale or rebalance moves (api/runtime/rebalance.py):
    # fewer, longer freezes with more; more, shorter ones with fewer
    migration_chunk_slots: int = 1024
    # a profiling aid (api/runtime/stall_watch.py): log where each shard's loop was
    # when it did not run for this many ms (0: off)
    stall_watch_ms: float = 0.0
    # "nginx": an nginx front holds the shoppers' connections and sends each request
    # to the process owning its key (api/runtime/front.py); the shards then listen on
    # Unix sockets only. Empty: every shard process serves the port itself.
    front: str = ""
    front_workers: int = 2  # nginx worker processes (each holds up to ~19,000 connections)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``OMNIGRID_*`` variables, then explicit overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get("OMNIGRID_" + f.name.upper())
            if raw is None:
                continue
            if f.name in ("channels", "kind_modules", "trusted_clients"):
                values[f.name] = tuple(c.strip() for c in raw.split(",") if c.strip())
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            elif f.type in ("bool", bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes")
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")
        if not self.channels:
            raise ValueError("the channel registry must name at least one channel")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.journal_sync not in ("full", "normal"):
            raise ValueError("journal_sync must be 'full' or 'normal'")
        if not 0 < self.journal_timeout_s <= 30:
            raise ValueError("journal_timeout_s must be > 0 and at most 30")
        if self.max_inflight < 1 or self.max_pending < 1:
            raise ValueError("max_inflight and max_pending must be at least 1")
        try:
            ports = self.extra_port_list()
        except ValueError:
            raise ValueError("extra_ports must be a comma-separated list of ports") from None
        if any(not 0 < p <= 65535 for p in ports):
            raise ValueError("extra_ports must be between 1 and 65535")
        if self.durability not in ("sync", "async", "none"):
            raise ValueError("durability must be 'sync', 'async' or 'none'")
        if self.writebehind_interval_s <= 0 or self.writebehind_batch < 1:
            raise ValueError("writebehind_interval_s must be > 0 and writebehind_batch >= 1")
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError("tls_certfile and tls_keyfile go together")
        if self.header_timeout_s < 0 or self.max_client_connections < 0:
            raise ValueError("header_timeout_s and max_client_connections must be >= 0")
        if not 1 <= self.stop_timeout_s <= 3600:
            raise ValueError("stop_timeout_s must be between 1 and 3600")
        if not 1 <= self.migration_chunk_slots <= 16_384:
            raise ValueError("migration_chunk_slots must be between 1 and 16384")
        if self.sync_log_retention_s < 60:
            raise ValueError("sync_log_retention_s must be at least 60")
        if self.front not in ("", "nginx"):
            raise ValueError("front must be empty or 'nginx'")
        if not 1 <= self.front_workers <= 64:
            raise ValueError("front_workers must be between 1 and 64")
        if self.writebehind_max_queue < 0 or self.max_resident < 0:
            raise ValueError("writebehind_max_queue and max_resident must be >= 0 (0: no limit)")

    def serves_only_loopback(self) -> bool:
        """Whether the grid's port is on loopback only (authentication may then be off)."""
        try:
            return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def extra_port_list(self) -> list[int]:
        return [int(p) for p in self.extra_ports.split(",") if p.strip()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        data["kind_modules"] = tuple(data.get("kind_modules", ()))
        data["trusted_clients"] = tuple(data.get("trusted_clients", ("127.0.0.1", "::1")))
        return cls(**data)
