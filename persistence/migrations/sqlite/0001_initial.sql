-- The embedded store: the same tables as PostgreSQL's, in SQLite's types.

CREATE TABLE omnigrid_snapshots (
    key        TEXT PRIMARY KEY,
    kind       TEXT    NOT NULL,
    slot       INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL,
    state      BLOB    NOT NULL,
    view       TEXT    NOT NULL
);
CREATE INDEX omnigrid_snapshots_slot ON omnigrid_snapshots (slot);

CREATE TABLE omnigrid_events (
    key     TEXT    NOT NULL,
    version INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    channel TEXT    NOT NULL,
    op      TEXT    NOT NULL,
    at      REAL    NOT NULL,
    view    TEXT    NOT NULL,
    PRIMARY KEY (key, version)
);
CREATE INDEX omnigrid_events_at ON omnigrid_events (at);
