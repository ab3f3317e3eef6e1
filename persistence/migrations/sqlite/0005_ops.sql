-- SQLite twin of the PostgreSQL migration: settings every grid process reads (the alert rules).

CREATE TABLE omnigrid_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
