-- What behaviour says about who a shopper may be (a shared device, address or
-- payment account): keyed hashes and masked forms only, for merge suggestions.

CREATE TABLE omnigrid_evidence (
    uid      TEXT NOT NULL,
    kind     TEXT NOT NULL,
    digest   TEXT NOT NULL,
    shown    TEXT NOT NULL,
    seen_at  REAL NOT NULL,
    PRIMARY KEY (uid, kind, digest)
);
CREATE INDEX omnigrid_evidence_value ON omnigrid_evidence (kind, digest);
