-- Unreleased events, found by time for the event-time release rule.
CREATE INDEX events_unreleased ON events (occurred_at_us) WHERE seq IS NULL;

-- The sequencer's durable state: `high_us`, how far event time has been released.
CREATE TABLE stream_state (
    key     TEXT PRIMARY KEY NOT NULL,
    value   INTEGER NOT NULL
);
