-- The first answers of keyed writes no entity keeps (an offline sync batch, a behaviour
-- batch): a retry with the same Idempotency-Key gets them back (persistence/request_keys.py).

CREATE TABLE omnigrid_request_keys (
    route       text NOT NULL,
    channel     text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    status      integer NOT NULL,
    body        text NOT NULL,               -- JSON
    at          double precision NOT NULL,   -- epoch seconds
    PRIMARY KEY (route, channel, key)
);
CREATE INDEX omnigrid_request_keys_at ON omnigrid_request_keys (at);
