-- Every event once, by normalised id. `seq` is NULL until the sequencer
-- releases the event; then it is the event's gapless stream position.
CREATE TABLE events (
    id              TEXT PRIMARY KEY NOT NULL,
    source          TEXT NOT NULL,
    origin          TEXT NOT NULL,
    occurred_at_us  INTEGER NOT NULL,
    received_at_us  INTEGER NOT NULL,
    type            TEXT NOT NULL,
    subject         TEXT,
    org             TEXT,
    payload         TEXT NOT NULL,
    seq             INTEGER UNIQUE,
    late            INTEGER NOT NULL DEFAULT 0
);

-- Per sink: the last seq its target has durably accepted.
CREATE TABLE cursors (
    sink            TEXT PRIMARY KEY NOT NULL,
    seq             INTEGER NOT NULL,
    updated_at_us   INTEGER NOT NULL
);

-- Bad input kept for inspection; bounded (oldest rows pruned by the writer).
CREATE TABLE rejected (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    detail          TEXT NOT NULL,
    bytes           BLOB NOT NULL,
    size            INTEGER NOT NULL,
    at_us           INTEGER NOT NULL
);
