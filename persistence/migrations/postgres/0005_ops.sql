-- Operations (issue 14): settings every grid process reads (the alert rules).

CREATE TABLE omnigrid_settings (
    name  text PRIMARY KEY,
    value text NOT NULL                          -- JSON
);
