-- SQLite twin of the PostgreSQL migration: the first answers of keyed writes no entity keeps.

CREATE TABLE omnigrid_request_keys (
    route       TEXT NOT NULL,
    channel     TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    at          REAL NOT NULL,
    PRIMARY KEY (route, channel, key)
);
CREATE INDEX omnigrid_request_keys_at ON omnigrid_request_keys (at);
