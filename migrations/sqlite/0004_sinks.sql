-- Events a sink gave up on (on_failure = "dead-letter"); `retry` = 1 asks
-- the sink to deliver the event again (`gapless dlq retry`).
CREATE TABLE dead_letters (
    sink        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    last_status INTEGER,
    last_error  TEXT NOT NULL,
    at_us       INTEGER NOT NULL,
    retry       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, seq)
);

-- A sink disabled by its target (HTTP 410 Gone), until a replay re-enables it.
CREATE TABLE sink_state (
    sink            TEXT PRIMARY KEY NOT NULL,
    disabled_reason TEXT,
    at_us           INTEGER NOT NULL
);

-- Operator requests the running daemon picks up (`gapless replay`).
CREATE TABLE sink_requests (
    sink            TEXT PRIMARY KEY NOT NULL,
    replay_from_seq INTEGER NOT NULL,
    at_us           INTEGER NOT NULL
);
