-- Per source: how far the REST history has been verified with no error.
-- Moves only when a whole poll window succeeded, in the same transaction as
-- the window's last events.
CREATE TABLE watermarks (
    source              TEXT PRIMARY KEY NOT NULL,
    verified_until_us   INTEGER NOT NULL,
    updated_at_us       INTEGER NOT NULL
);
