-- Channel behaviour (views, searches, store visits...) and webhooks with their queue.

CREATE TABLE omnigrid_behaviour (
    id         bigserial PRIMARY KEY,
    uid        text             NOT NULL,
    event_id   text,                          -- the channel's own id, for retries
    type       text             NOT NULL,
    channel    text             NOT NULL,
    at         double precision NOT NULL,     -- epoch seconds
    data       text             NOT NULL,     -- JSON: sku, query, store_id, qty, amount, ref
    UNIQUE (uid, event_id)
);
CREATE INDEX omnigrid_behaviour_uid_at ON omnigrid_behaviour (uid, at);
CREATE INDEX omnigrid_events_key_at ON omnigrid_events (key, at);

CREATE TABLE omnigrid_webhooks (
    id         text PRIMARY KEY,
    url        text             NOT NULL,
    kinds      text             NOT NULL,     -- JSON list of entity kinds: ["cart", "stock"]
    secret     text             NOT NULL,
    created_at double precision NOT NULL
);

CREATE TABLE omnigrid_deliveries (           -- the queue: written with the event log
    id         bigserial PRIMARY KEY,
    shard      integer          NOT NULL,     -- the shard that delivers it
    webhook_id text             NOT NULL,
    event_id   text             NOT NULL,     -- "<key>:<version>": receivers dedupe on it
    body       text             NOT NULL,
    attempts   integer          NOT NULL DEFAULT 0,
    next_at    double precision NOT NULL,
    last_error text,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX omnigrid_deliveries_due ON omnigrid_deliveries (shard, next_at);

CREATE TABLE omnigrid_dead_letters (
    id         bigserial PRIMARY KEY,
    webhook_id text             NOT NULL,
    event_id   text             NOT NULL,
    body       text             NOT NULL,
    attempts   integer          NOT NULL,
    last_error text,
    dead_at    double precision NOT NULL
);
CREATE INDEX omnigrid_dead_letters_webhook ON omnigrid_dead_letters (webhook_id, id);
