-- The leader lease of an active/passive pair: one row per lease name.
-- `epoch` grows by one on every acquisition; a write that matters checks
-- it inside its own transaction (the fencing token), so a leader that lost
-- the lease cannot commit after its successor took over.
CREATE TABLE leader (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
