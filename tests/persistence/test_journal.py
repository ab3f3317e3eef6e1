"""Journals against real stores: SQLite files and a Redis of the test's own."""

from __future__ import annotations

import time

import pytest

from omnigrid.actors.protocol import Command
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.journal import JournalUnavailable, SqliteJournal
from omnigrid.persistence.redis_journal import RedisJournal
from tests.conftest import OwnRedis, free_port


def stock(shard: Shard, sku: str, on_hand: int) -> int:
    return shard.apply(Command("stock.set", "stock:" + sku, {"on_hand": on_hand}, "pos")).status


def test_sqlite_journal_replays_into_the_same_state(tmp_path: object) -> None:
    path = f"{tmp_path}/journal.sqlite3"
    first = Shard(0, SlotMap.even(1), SqliteJournal(path))
    stock(first, "a", 10)
    reserved = first.apply(
        Command("stock.reserve", "stock:a", {"qty": 3, "ttl_s": 60, "ref": None}, "app", "k", "f")
    )
    first.apply(Command("cart.add", "cart:u", {"sku": "a", "qty": 2, "available": 7}, "h5"))
    again = Shard(0, SlotMap.even(1), SqliteJournal(path))
    assert again.recover(again.journal.replay()) == 3
    for key, entity in first.entities.items():
        assert again.entities[key].view() == entity.view()
    retry = again.apply(
        Command("stock.reserve", "stock:a", {"qty": 3, "ttl_s": 60, "ref": None}, "app", "k", "f")
    )
    assert retry.body == reserved.body  # the idempotency record was replayed too


def test_redis_down_means_503_for_writes_reads_from_memory_then_recovery(
    own_redis: OwnRedis,
) -> None:
    shard = Shard(0, SlotMap.even(1), RedisJournal(own_redis.url, "og:test:journal:0"))
    assert stock(shard, "a", 10) == 200
    shard.apply(Command("cart.add", "cart:u", {"sku": "a", "qty": 1, "available": 10}, "h5"))
    own_redis.stop()
    result = shard.apply(Command("stock.adjust", "stock:a", {"delta": 5}, "pos"))
    assert (result.status, result.code) == (503, "unavailable")
    # reads keep working from memory, and the refused change left no trace
    view = shard.apply(Command("stock.get", "stock:a")).body
    assert (view["on_hand"], view["version"]) == (10, 1)
    assert shard.apply(Command("cart.get", "cart:u")).body["version"] == 1
    # writes answer 503 at once while the journal is down
    again = shard.apply(Command("cart.clear", "cart:u", {}, "app"))
    assert (again.status, again.code) == (503, "unavailable")
    assert shard.apply(Command("cart.get", "cart:u")).body["version"] == 1
    own_redis.start()  # the same AOF directory: the journal is still there
    deadline = time.monotonic() + 5  # the shard tries the journal again once a second
    while stock(shard, "a", 12) == 503:
        assert time.monotonic() < deadline, "the shard never recovered"
        time.sleep(0.1)
    assert shard.apply(Command("stock.get", "stock:a")).body["version"] == 2
    rebuilt = Shard(0, SlotMap.even(1), RedisJournal(own_redis.url, "og:test:journal:0"))
    rebuilt.recover(rebuilt.journal.replay())
    for key in ("stock:a", "cart:u"):
        assert rebuilt.entities[key].view() == shard.entities[key].view()


def test_an_unreachable_redis_refuses_appends() -> None:
    journal = RedisJournal(f"redis://127.0.0.1:{free_port()}/0", "og:none")
    with pytest.raises(JournalUnavailable):
        list(journal.replay())
