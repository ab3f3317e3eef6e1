"""Keys, signatures and scopes, in-process: an open grid until its first key; then
every request signed, within its scopes, as its channel, in its store."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnigrid.actors.errors import GridError
from omnigrid.api.client import GridAuth
from omnigrid.api.http.auth import SCOPES, Keyring, SecretMac, parse
from omnigrid.api.http.routes import UNSET, all_routes
from tests.conftest import Grid, write_headers
from tests.inprocess import in_process_client

PUBLIC = {"healthz", "readyz", "ops_dashboard"}  # the page: its data calls are signed


@pytest.fixture
def local() -> Iterator[httpx.Client]:
    with in_process_client() as client:
        yield client


def make_key(c: httpx.Client, auth: httpx.Auth | None = None, **body: Any) -> GridAuth:
    r = c.post(
        "/v1/admin/keys",
        json={"name": "k", **body},
        headers=write_headers(),
        auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
    )
    assert r.status_code == 201, r.text
    return GridAuth(r.json()["key_id"], r.json()["secret"])


@given(st.text(min_size=1, max_size=200), st.binary(max_size=500))
def test_the_grids_mac_is_hmac_sha256(secret: str, text: bytes) -> None:
    """The precomputed-state MAC the grid verifies with is RFC 2104's, short keys and
    keys longer than the block alike."""
    expected = hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
    assert SecretMac(secret).hexdigest(text) == expected


def test_an_authorization_header_parses_the_same_written_either_way() -> None:
    canonical = f"OG1-HMAC-SHA256 key=k_1, ts=1700000000, nonce={'n' * 16}, sig={'a' * 64}"
    loose = f"OG1-HMAC-SHA256 sig={'a' * 64},nonce={'n' * 16} , ts=1700000000,key=k_1"
    assert parse(canonical) == parse(loose)
    for bad in (canonical.replace("ts=1", "ts=x"), canonical + ", key=k_2", canonical[:-1]):
        with pytest.raises(GridError):
            parse(bad)


def test_every_route_has_a_scope() -> None:
    for route in all_routes():
        assert route.scope != UNSET, route.name
        assert route.scope in SCOPES | {"", None}, (route.name, route.scope)
        if route.scope is None:
            assert route.name in PUBLIC, route.name


def test_the_first_key_closes_the_door(local: httpx.Client) -> None:
    assert local.get("/v1/skus/s1/stock").status_code == 404  # open: no key yet
    admin = make_key(local, scopes=["admin"])
    listed = local.get("/v1/admin/keys", auth=admin).json()["keys"]
    assert [k["key_id"] for k in listed] == [admin.key_id] and "secret" not in listed[0]
    r = local.put("/v1/skus/s1/stock", json={"on_hand": 5}, headers=write_headers())
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    signed = local.put(
        "/v1/skus/s1/stock", json={"on_hand": 5}, headers=write_headers(), auth=admin
    )
    assert signed.status_code == 200
    assert local.get("/healthz").status_code == 200  # public
    assert local.get("/v1/skus/s1/stock", auth=admin).json()["on_hand"] == 5


def test_stale_replayed_tampered_and_unknown_requests_change_nothing(local: httpx.Client) -> None:
    admin = make_key(local, scopes=["admin"])
    local.put("/v1/skus/s1/stock", json={"on_hand": 5}, headers=write_headers(), auth=admin)
    body = b'{"delta": 1}'
    target = "/v1/skus/s1/stock/adjustments"

    def send(header: str, content: bytes = body) -> httpx.Response:
        return local.post(
            target, content=content, headers={**write_headers(), "Authorization": header}
        )

    stale = admin.header("POST", target, body, ts=int(time.time()) - 301)
    assert send(stale).status_code == 401
    fresh = admin.header("POST", target, body)
    assert send(fresh).status_code == 200
    replay = send(fresh)
    assert (replay.status_code, replay.json()["code"]) == (401, "unauthenticated")
    assert send(admin.header("POST", target, body), b'{"delta": 9}').status_code == 401
    assert send(GridAuth("k_nobody", "x" * 20).header("POST", target, body)).status_code == 401
    for bad in (
        "Bearer x",
        "OG1-HMAC-SHA256 key=a",
        "OG1-HMAC-SHA256 key=a, ts=1, nonce=short, sig=00",
    ):
        assert send(bad).status_code == 401
    assert local.get("/v1/skus/s1/stock", auth=admin).json()["on_hand"] == 6  # once


def test_a_refused_request_replayed_is_refused_as_a_replay(local: httpx.Client) -> None:
    """The nonce of an entity route is checked by its owner with the request's first
    command; a request refused before it reached the owner has its nonce checked
    after, so its replay is a replay (401), not the refusal again."""
    admin = make_key(local, scopes=["admin"])
    local.put("/v1/skus/r1/stock", json={"on_hand": 1}, headers=write_headers(), auth=admin)
    for target, body in (
        ("/v1/skus/r1/reservations", b'{"qty": 5, "ttl_s": 60}'),  # 409: the owner refused
        ("/v1/skus/r1/reservations", b'{"qty": -1}'),  # 422: refused before any command
    ):
        header = admin.header("POST", target, body)
        sent = {**write_headers(), "Authorization": header}
        first = local.post(target, content=body, headers=sent)
        assert first.status_code in (409, 422), first.text
        again = local.post(target, content=body, headers=sent)
        assert (again.status_code, again.json()["code"]) == (401, "unauthenticated")
    stock = local.get("/v1/skus/r1/stock", auth=admin).json()
    assert (stock["on_hand"], stock["reserved"]) == (1, 0)


def test_scopes_and_channels_bound_what_a_key_may_do(local: httpx.Client) -> None:
    admin = make_key(local, scopes=["admin"])
    local.put("/v1/skus/s1/stock", json={"on_hand": 5}, headers=write_headers(), auth=admin)
    reader = make_key(local, admin, scopes=["carts:read", "stock:read"])
    assert local.get("/v1/carts/u1", auth=reader).status_code == 200
    assert local.get("/v1/skus/s1/stock", auth=reader).status_code == 200
    add = {"sku": "s1", "qty": 1}
    refused = local.post("/v1/carts/u1/lines", json=add, headers=write_headers(), auth=reader)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert local.get("/v1/admin/keys", auth=reader).status_code == 403
    assert local.get("/metrics", auth=reader).status_code == 403
    till = make_key(local, admin, scopes=["carts:write", "carts:read"], channel="pos")
    as_app = local.post("/v1/carts/u1/lines", json=add, headers=write_headers("app"), auth=till)
    assert as_app.status_code == 403
    as_pos = local.post("/v1/carts/u1/lines", json=add, headers=write_headers("pos"), auth=till)
    assert as_pos.status_code == 200
    assert local.get("/v1/carts/u1", auth=admin).json()["lines"][0]["qty"] == 1  # once


def test_a_store_bound_key_sees_only_its_store(local: httpx.Client) -> None:
    admin = make_key(local, scopes=["admin"])
    for sku in ("a",):
        local.put(
            f"/v1/products/{sku}",
            json={"title": sku, "price": 100},
            headers=write_headers(),
            auth=admin,
        )
        local.put(f"/v1/skus/{sku}/stock", json={"on_hand": 9}, headers=write_headers(), auth=admin)
    orders = {}
    for store in ("s1", "s2"):
        body = {"uid": f"u-{store}", "lines": [{"sku": "a", "qty": 1}], "store": store}
        r = local.post("/v1/checkouts", json=body, headers=write_headers(), auth=admin)
        orders[store] = r.json()["order_id"]
    shop = make_key(local, admin, scopes=["orders:read", "members:read"], store="s1")
    assert local.get(f"/v1/orders/{orders['s1']}", auth=shop).status_code == 200
    other = local.get(f"/v1/orders/{orders['s2']}", auth=shop)
    assert other.status_code == 403  # and nothing of the order: its user, lines, store
    assert not {"u-s2", "lines", "s2", "total"} & set(other.json()["detail"].split())
    assert set(other.json()) == {"type", "title", "status", "detail", "code", "instance"}
    missing = local.get("/v1/orders/nosuch", auth=shop)
    assert missing.status_code == 403  # the same answer: nothing says whether it exists
    assert local.get("/v1/stores/s1/orders", auth=shop).status_code == 200
    assert local.get("/v1/stores/s2/orders", auth=shop).status_code == 403
    assert local.get("/v1/members/u-s2", auth=shop).status_code == 403
    # it writes only for its store: no sale for, nor hand-over at, another one
    till = make_key(local, admin, scopes=["orders:write", "orders:read"], store="s1")
    stock_before = local.get("/v1/skus/a/stock", auth=admin).json()
    for elsewhere in (
        {"store": "s2"},
        {"store": "s1", "fulfilment": "pickup", "pickup_store": "s2"},
    ):
        body = {"uid": "u-x", "lines": [{"sku": "a", "qty": 1}], **elsewhere}
        r = local.post("/v1/checkouts", json=body, headers=write_headers(), auth=till)
        assert (r.status_code, r.json()["code"]) == (403, "forbidden"), r.text
    assert local.get("/v1/skus/a/stock", auth=admin).json() == stock_before  # nothing held
    body = {"uid": "u-x", "lines": [{"sku": "a", "qty": 1}], "store": "s1"}
    mine = local.post("/v1/checkouts", json=body, headers=write_headers(), auth=till)
    assert mine.status_code == 201, mine.text
    assert local.get(f"/v1/orders/{mine.json()['order_id']}", auth=till).status_code == 200
    # nor for another store's member (their points, their orders): a walk-in is served
    resolve = {"identifiers": [{"type": "device_id", "value": "d-home-s2"}], "store": "s2"}
    made = local.post("/v1/identities/resolve", json=resolve, headers=write_headers(), auth=admin)
    assert made.status_code == 200, made.text
    theirs = {**body, "uid": made.json()["uid"]}
    r = local.post("/v1/checkouts", json=theirs, headers=write_headers(), auth=till)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden"), r.text


def test_rotation_overlaps_and_revocation_is_immediate(local: httpx.Client) -> None:
    admin = make_key(local, scopes=["admin"])
    key = make_key(local, admin, scopes=["stock:read"])
    r = local.post(
        f"/v1/admin/keys/{key.key_id}/rotate",
        json={"overlap_s": 60},
        headers=write_headers(),
        auth=admin,
    )
    new = GridAuth(key.key_id, r.json()["secret"])
    assert new.secret != key.secret
    for auth in (key, new):  # both, for the overlap
        assert local.get("/v1/skus/s1/stock", auth=auth).status_code == 404
    r = local.post(
        f"/v1/admin/keys/{key.key_id}/rotate",
        json={"overlap_s": 0},
        headers=write_headers(),
        auth=admin,
    )
    newest = GridAuth(key.key_id, r.json()["secret"])
    assert local.get("/v1/skus/s1/stock", auth=new).status_code == 401
    assert local.get("/v1/skus/s1/stock", auth=newest).status_code == 404
    gone = local.delete(f"/v1/admin/keys/{key.key_id}", headers=write_headers(), auth=admin)
    assert gone.status_code == 200 and gone.json()["revoked_at"] is not None
    assert local.get("/v1/skus/s1/stock", auth=newest).status_code == 401
    bad = local.post(
        "/v1/admin/keys",
        json={"name": "x", "scopes": ["root"]},
        headers=write_headers(),
        auth=admin,
    )
    assert bad.status_code == 422


def send_twelve_times(url: str, auth: GridAuth, target: str, body: bytes) -> list[int]:
    """One signed POST sent twelve times, each on a fresh connection (SO_REUSEPORT
    spreads them over the processes): the answers' statuses."""
    header = auth.header("POST", target, body)
    answers = []
    for _ in range(12):
        with httpx.Client(base_url=url, timeout=10) as one:
            sent = {**write_headers(), "Authorization": header}
            answers.append(one.post(target, content=body, headers=sent).status_code)
    return answers


def get_twelve_times(url: str, target: str) -> list[int]:
    """An unsigned GET sent twelve times, each on a fresh connection: the statuses."""
    answers = []
    for _ in range(12):
        with httpx.Client(base_url=url, timeout=10) as one:
            answers.append(one.get(target).status_code)
    return answers


def test_keys_from_the_cli_on_a_real_grid_replays_to_any_process_and_revocation() -> None:
    """Two processes serve one port: a key made with ``omnigrid keys`` on the host is
    honoured by both, a signed request replayed is refused whichever process it
    reaches, and a revoked key is refused by both at once."""
    grid = Grid()
    try:
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "omnigrid.api.runtime.cli",
                "keys",
                "--data-dir",
                grid.data_dir,
                "create",
                "--scopes",
                "admin",
                "--name",
                "ops",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=grid.env,
        )
        created = json.loads(made.stdout)
        admin = GridAuth(created["key_id"], created["secret"])
        # every process reloads keys within 2 s, each on its own clock: until both have,
        # one of them is still open (no keys yet) and takes a replay unchecked
        deadline = time.monotonic() + 10
        while set(get_twelve_times(grid.url, "/v1/cluster")) != {401}:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            c.put("/v1/skus/s1/stock", json={"on_hand": 5}, headers=write_headers(), auth=admin)
            answers = send_twelve_times(
                grid.url, admin, "/v1/skus/s1/stock/adjustments", b'{"delta": 1}'
            )
            assert sorted(answers) == [200] + [401] * 11, answers
            # a cart line: its nonce rides the first command to the cart's owner, whose
            # SKU may live on the other process; a replay anywhere adds nothing
            answers = send_twelve_times(
                grid.url, admin, "/v1/carts/u-replay/lines", b'{"sku": "s1", "qty": 1}'
            )
            assert sorted(answers) == [200] + [401] * 11, answers
            cart = c.get("/v1/carts/u-replay", auth=admin).json()
            assert [line["qty"] for line in cart["lines"]] == [1]
            reader = make_key(c, admin, scopes=["stock:read"])
            r = c.delete(f"/v1/admin/keys/{reader.key_id}", headers=write_headers(), auth=admin)
            assert r.status_code == 200
            for _ in range(12):  # at once, on every process
                with httpx.Client(base_url=grid.url, timeout=10) as one:
                    assert one.get("/v1/skus/s1/stock", auth=reader).status_code == 401
            assert c.get("/v1/skus/s1/stock", auth=admin).json()["on_hand"] == 6
    finally:
        grid.stop()


def test_a_grid_on_a_non_loopback_address_needs_a_key_or_insecure(tmp_path: Any) -> None:
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnigrid.api.runtime.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "no API key" in refused.stderr


def test_x_unmask_shows_phone_and_email_to_pii_read_only_and_logs_it(local: httpx.Client) -> None:
    admin = make_key(local, scopes=["admin"])
    ids = [
        {"type": "phone", "value": "13812341234"},
        {"type": "email", "value": "Ann@Example.com"},
        {"type": "id_number", "value": "11010519491231002X"},
    ]
    r = local.post(
        "/v1/identities/resolve", json={"identifiers": ids}, headers=write_headers(), auth=admin
    )
    uid = r.json()["uid"]
    path = f"/v1/users/{uid}/identities"
    masked = [i["value"] for i in local.get(path, auth=admin).json()["identifiers"]]
    assert "13812341234" not in str(masked) and "ann@example.com" not in masked
    reader = make_key(local, admin, scopes=["members:read"])
    refused = local.get(path, auth=reader, headers={"X-Unmask": "true"})
    assert refused.status_code == 403
    pii = make_key(local, admin, scopes=["members:read", "pii:read"])
    clear = local.get(path, auth=pii, headers={"X-Unmask": "true"}).json()["identifiers"]
    values = {i["type"]: i["value"] for i in clear}
    assert values["phone"] == "+8613812341234" and values["email"] == "ann@example.com"
    assert values["id_number"].startswith("1101") and "*" in values["id_number"]
    log = local.get("/v1/admin/pii-access", auth=admin).json()["reads"]
    assert [(e["key_id"], e["route"], e["uid"]) for e in log] == [
        (pii.key_id, "get_identities", uid)
    ]


def test_a_grid_that_cannot_read_its_keys_lets_nobody_in() -> None:
    ring = Keyring(b"a deployment secret of 32 bytes!")
    assert ring.enabled  # not loaded: closed, not open
    header = GridAuth("k_any", "x" * 20).header("GET", "/v1/carts/u1", b"")
    with pytest.raises(GridError) as refused:
        ring.verify("GET", "/v1/carts/u1", header, b"", time.time())
    assert refused.value.code == "unavailable"
    ring.load([])
    assert not ring.enabled  # loaded, and no key: the open grid of a fresh install


def test_beyond_loopback_revoking_every_key_closes_the_door() -> None:
    """Authentication is off only on loopback with no key: a grid serving another address
    whose last key is revoked refuses everyone, it does not open."""
    from omnigrid.api.runtime.settings import Settings

    public = Settings(host="0.0.0.0")
    assert not public.serves_only_loopback()
    assert Settings(host="127.0.0.1").serves_only_loopback()
    assert Settings(host="localhost").serves_only_loopback()
    assert Settings(host="::1").serves_only_loopback()
    ring = Keyring(b"a deployment secret of 32 bytes!", always_on=not public.serves_only_loopback())
    ring.load([])  # every key revoked (revoked keys are not loaded)
    assert ring.enabled
    header = GridAuth("k_gone", "x" * 20).header("GET", "/v1/carts/u1", b"")
    with pytest.raises(GridError) as refused:
        ring.verify("GET", "/v1/carts/u1", header, b"", time.time())
    assert refused.value.code == "unauthenticated"
