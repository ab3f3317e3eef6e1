-- SQLite twin of the PostgreSQL migration: API keys (no secret stored) and the pii-access log.

CREATE TABLE omnigrid_keys (
    id                  TEXT PRIMARY KEY,
    name                TEXT    NOT NULL,
    scopes              TEXT    NOT NULL,
    channel             TEXT,
    store               TEXT,
    generation          INTEGER NOT NULL,
    previous_generation INTEGER,
    previous_until      REAL,
    created_at          REAL    NOT NULL,
    revoked_at          REAL
);

CREATE TABLE omnigrid_pii_access (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id  TEXT    NOT NULL,
    route   TEXT    NOT NULL,
    uid     TEXT,
    at      REAL    NOT NULL
);
CREATE INDEX omnigrid_pii_access_at ON omnigrid_pii_access (at);
