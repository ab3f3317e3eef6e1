-- What behaviour says about who a shopper may be (a shared device, address or
-- payment account): keyed hashes and masked forms only, for merge suggestions.

CREATE TABLE omnigrid_evidence (
    uid      text             NOT NULL,
    kind     text             NOT NULL,     -- device_id | address | payment
    digest   text             NOT NULL,     -- keyed hash of the value
    shown    text             NOT NULL,     -- masked
    seen_at  double precision NOT NULL,     -- epoch seconds, the latest sighting
    PRIMARY KEY (uid, kind, digest)
);
CREATE INDEX omnigrid_evidence_value ON omnigrid_evidence (kind, digest);
