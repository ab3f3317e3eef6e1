-- The system of record: each entity's latest snapshot and every change it went through.

CREATE TABLE omnigrid_snapshots (
    key        text PRIMARY KEY,          -- "<kind>:<ident>", e.g. cart:u123, stock:sku-9
    kind       text        NOT NULL,
    slot       integer     NOT NULL,      -- CRC16 slot, so a shard loads only its own
    version    bigint      NOT NULL,
    updated_at timestamptz,
    state      bytea       NOT NULL,      -- msgpack of Entity.state(): what recovery restores
    view       jsonb       NOT NULL       -- the entity's API view, for people and queries
);
CREATE INDEX omnigrid_snapshots_slot ON omnigrid_snapshots (slot);

CREATE TABLE omnigrid_events (
    key     text        NOT NULL,
    version bigint      NOT NULL,
    kind    text        NOT NULL,
    channel text        NOT NULL,
    op      text        NOT NULL,
    at      timestamptz NOT NULL,
    view    jsonb       NOT NULL,          -- the entity's view after the change
    PRIMARY KEY (key, version)
);
CREATE INDEX omnigrid_events_at ON omnigrid_events (at);
