"""``omnigrid keys create|list|rotate|revoke``: API keys, from a grid host.

Works on the grid's store directly (the same settings as ``omnigrid serve``), so
the first admin key can be made before anyone can call the grid; running grid
processes see a change within two seconds. A secret is printed once and stored
nowhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from omnigrid.api.http.auth import SCOPES, Keyring
from omnigrid.api.runtime.compose import identity_secret, open_store
from omnigrid.api.runtime.settings import Settings
from omnigrid.persistence.db import Database
from omnigrid.persistence.keys import KeyStore


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = commands.add_parser("keys", help="create, list, rotate or revoke API keys")
    keys.add_argument("--data-dir", help="the grid's data directory (the embedded store)")
    verbs = keys.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="a new key; its secret is printed once")
    create.add_argument("--name", default="key")
    create.add_argument(
        "--scopes", required=True, help="comma-separated: " + ", ".join(sorted(SCOPES))
    )
    create.add_argument("--channel", help="the only channel it may write as")
    create.add_argument("--store", help="the only store whose orders and members it sees")
    verbs.add_parser("list", help="every key, no secrets")
    rotate = verbs.add_parser("rotate", help="a new secret; the old one works for --overlap-s")
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap-s", type=int, default=3600)
    revoke = verbs.add_parser("revoke", help="refuse the key from now on")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir)
    settings = replace(settings, data_dir=os.path.abspath(settings.data_dir))
    store, keyring = open_keys(settings)
    if args.verb == "create":
        scopes = sorted({s.strip() for s in args.scopes.split(",") if s.strip()})
        unknown = sorted(set(scopes) - SCOPES)
        if not scopes or unknown:
            print(f"omnigrid keys: unknown scope(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        key = store.create(args.name, scopes, args.channel, args.store)
        print(json.dumps({**key.public(), "secret": keyring.secret_of(key)}, indent=2))
    elif args.verb == "list":
        print(json.dumps([k.public() for k in store.all()], indent=2))
    elif args.verb == "rotate":
        rotated = store.rotate(args.key_id, args.overlap_s)
        if rotated is None:
            print(f"omnigrid keys: no live key {args.key_id}", file=sys.stderr)
            return 1
        print(json.dumps({**rotated.public(), "secret": keyring.secret_of(rotated)}, indent=2))
    else:
        revoked = store.revoke(args.key_id)
        if revoked is None:
            print(f"omnigrid keys: no key {args.key_id}", file=sys.stderr)
            return 1
        print(json.dumps(revoked.public(), indent=2))
    return 0


def open_keys(settings: Settings) -> tuple[KeyStore, Keyring]:
    open_store(settings).close()  # its migrations make the keys' table
    database = (
        Database(postgres_dsn=settings.postgres_dsn)
        if settings.postgres_dsn
        else Database(sqlite_path=os.path.join(settings.data_dir, "store.sqlite3"))
    )
    return KeyStore(database), Keyring(identity_secret(settings))


def refuse_open_door(settings: Settings) -> str | None:
    """Why the grid may not start (None: it may): a non-loopback address with no key,
    unless ``insecure``."""
    if settings.serves_only_loopback() or settings.bootstrap_key:
        return None
    store, _ = open_keys(settings)
    if any(k.revoked_at is None for k in store.all()):
        return None
    if settings.insecure:
        print(
            f"omnigrid: WARNING: serving {settings.host} with no API key (--insecure): "
            "anyone who reaches it may do anything",
            file=sys.stderr,
            flush=True,
        )
        return None
    return (
        f"refusing to serve {settings.host} with no API key: create one with "
        "'omnigrid keys create --scopes admin', set OMNIGRID_BOOTSTRAP_KEY, or pass "
        "--insecure"
    )
