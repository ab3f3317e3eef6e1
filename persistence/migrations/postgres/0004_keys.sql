-- API keys (issue 14): no secret is stored. A key's secret is derived from the
-- deployment's secret, the key id and its generation (api/http/auth.py), so a
-- rotation is a new generation and the old one lives until previous_until.

CREATE TABLE omnigrid_keys (
    id                  text             PRIMARY KEY,
    name                text             NOT NULL,
    scopes              text             NOT NULL,     -- JSON list
    channel             text,                          -- writes only as this channel
    store               text,                          -- sees only this store's orders
    generation          integer          NOT NULL,
    previous_generation integer,
    previous_until      double precision,              -- epoch seconds
    created_at          double precision NOT NULL,
    revoked_at          double precision
);

CREATE TABLE omnigrid_pii_access (                     -- every unmasked read
    id      bigserial        PRIMARY KEY,
    key_id  text             NOT NULL,
    route   text             NOT NULL,
    uid     text,
    at      double precision NOT NULL
);
CREATE INDEX omnigrid_pii_access_at ON omnigrid_pii_access (at);
