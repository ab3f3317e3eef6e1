-- SQLite twin of the PostgreSQL migration: channel behaviour (views, searches, store visits...) and webhooks with their queue.

CREATE TABLE omnigrid_behaviour (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    uid        TEXT             NOT NULL,
    event_id   TEXT,                          -- the channel's own id, for retries
    type       TEXT             NOT NULL,
    channel    TEXT             NOT NULL,
    at         REAL NOT NULL,     -- epoch seconds
    data       TEXT             NOT NULL,     -- JSON: sku, query, store_id, qty, amount, ref
    UNIQUE (uid, event_id)
);
CREATE INDEX omnigrid_behaviour_uid_at ON omnigrid_behaviour (uid, at);
CREATE INDEX omnigrid_events_key_at ON omnigrid_events (key, at);

CREATE TABLE omnigrid_webhooks (
    id         TEXT PRIMARY KEY,
    url        TEXT             NOT NULL,
    kinds      TEXT             NOT NULL,     -- JSON list of entity kinds: ["cart", "stock"]
    secret     TEXT             NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE omnigrid_deliveries (           -- the queue: written with the event log
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    shard      INTEGER          NOT NULL,     -- the shard that delivers it
    webhook_id TEXT             NOT NULL,
    event_id   TEXT             NOT NULL,     -- "<key>:<version>": receivers dedupe on it
    body       TEXT             NOT NULL,
    attempts   INTEGER          NOT NULL DEFAULT 0,
    next_at    REAL NOT NULL,
    last_error TEXT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX omnigrid_deliveries_due ON omnigrid_deliveries (shard, next_at);

CREATE TABLE omnigrid_dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT             NOT NULL,
    event_id   TEXT             NOT NULL,
    body       TEXT             NOT NULL,
    attempts   INTEGER          NOT NULL,
    last_error TEXT,
    dead_at    REAL NOT NULL
);
CREATE INDEX omnigrid_dead_letters_webhook ON omnigrid_dead_letters (webhook_id, id);
