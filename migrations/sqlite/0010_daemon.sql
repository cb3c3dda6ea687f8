-- Where the running daemon's admin endpoint is bound. `admin.listen` may
-- ask for port 0 (any free port); `gapless status` then finds `/readyz`
-- here. One row, replaced at each start.
CREATE TABLE daemon (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    admin_addr      TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    started_at_us   INTEGER NOT NULL
);
