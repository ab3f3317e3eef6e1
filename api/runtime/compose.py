"""The composition root: every I/O of a grid process's start, in one place.

``open_node`` loads the configured kinds and the deployment's keys and tables,
opens the journal and the store, recovers the shard from them, and hands the
parts to ``GridNode``, whose constructor only wires them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import time

from omnigrid.actors import identifiers, tiers
from omnigrid.actors.kinds import load as load_kinds
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.api.runtime.node import Directory, GridNode, database_for
from omnigrid.api.runtime.settings import Settings
from omnigrid.persistence.cluster_state import ClusterState
from omnigrid.persistence.file_journal import FileJournal, carry_over_sqlite
from omnigrid.persistence.journal import Journal, NullJournal
from omnigrid.persistence.redis_journal import RedisJournal
from omnigrid.persistence.store import PostgresStore, SqliteStore, Store, StoreUnavailable

log = logging.getLogger("omnigrid.node")


def open_node(shard_id: int, settings: Settings, directory: Directory, node_id: str) -> GridNode:
    """The composition root's I/O, in one place: load the configured kinds, open the
    journal and the store, and recover the shard from them; then wire the node."""
    load_kinds(settings.kind_modules)  # before recovery: the journal may hold their events
    identifiers.configure(identity_secret(settings), settings.phone_region)
    if settings.tiers:
        tiers.configure(tiers.tiers_from_json(settings.tiers))
    journal = open_journal(settings, shard_id)
    store = open_store(settings)
    slot_map = stored_slot_map(settings, shard_id)
    shard = Shard(
        shard_id,
        slot_map,
        journal,
        loader=store.load,
        max_resident=settings.max_resident,
        max_queue=settings.writebehind_max_queue,
        durability="async" if settings.durability == "async" else "sync",
        drain_keys=settings.writebehind_batch,
    )
    started = time.monotonic()
    replayed = shard.recover(journal.replay(), store.scan(slot_map.ranges(shard_id)))
    recovery_s = time.monotonic() - started
    log.info(
        "shard %d recovered %d entities (%d more passivated) and %d journaled events "
        "from %s and %s in %.2f s",
        shard_id,
        len(shard.entities),
        len(shard.residency.cold),
        replayed,
        type(store).__name__,
        type(journal).__name__,
        recovery_s,
    )
    secret = identity_secret(settings)  # identifiers' hashes and API keys' secrets
    return GridNode(settings, directory, node_id, journal, store, shard, recovery_s, secret)


def stored_slot_map(settings: Settings, shard_id: int) -> SlotMap:
    """The map the grid's last scale or rebalance stored (api/runtime/rebalance.py);
    on a grid's first start, even ranges over ``settings.shards``, stored by shard 0."""
    state = ClusterState(database_for(settings), settings.namespace)
    wire = state.slot_map()
    if wire is not None:
        return SlotMap.from_wire(wire)
    slot_map = SlotMap.even(settings.shards)
    if shard_id == 0:
        try:
            state.save_slot_map(slot_map.to_wire())
        except StoreUnavailable as e:  # the grid serves; a scale job will say it cannot
            log.warning("the slot map cannot be stored (%s); serving even ranges", e)
    return slot_map


def identity_secret(settings: Settings) -> bytes:
    """The deployment's identity key: the setting, else data_dir/identity.key, made
    once (by whichever process comes first: the file is linked into place whole)."""
    if settings.identity_secret:
        return settings.identity_secret.encode()
    path = os.path.join(settings.data_dir, "identity.key")
    if not os.path.exists(path):
        os.makedirs(settings.data_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=settings.data_dir, prefix=".identity-")
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(tmp, path)
        os.unlink(tmp)
    with open(path) as f:
        return f.read().strip().encode()


def open_journal(settings: Settings, shard_id: int) -> Journal:
    """Redis Streams when ``redis_url`` is set, else segment files under ``data_dir``."""
    if settings.durability == "none":
        return NullJournal()
    if settings.redis_url:
        return RedisJournal(
            settings.redis_url,
            f"og:{settings.namespace}:journal:{shard_id}",
            settings.journal_timeout_s,
        )
    journal = FileJournal(
        os.path.join(settings.data_dir, f"journal-shard{shard_id}"), settings.journal_sync
    )
    earlier = os.path.join(settings.data_dir, f"journal-shard{shard_id}.sqlite3")
    if os.path.exists(earlier):  # a data directory from before the file journal
        carry_over_sqlite(earlier, journal)
    return journal


def open_store(settings: Settings) -> Store:
    """PostgreSQL when ``postgres_dsn`` is set, else one SQLite file in ``data_dir``."""
    if settings.postgres_dsn:
        return PostgresStore(settings.postgres_dsn)
    return SqliteStore(os.path.join(settings.data_dir, "store.sqlite3"))
