-- Gaps gapless reported in the stream (one row per `io.gapless.gap` marker,
-- keyed by the marker's id): what `gapless status` lists and the gap
-- metrics count. An `unverified` gap stays open (`verified_at_us` NULL)
-- and grows while `stream.max_hold` keeps forcing events out, until the
-- poller verifies past its end and the `io.gapless.verified` marker closes it.
CREATE TABLE gaps (
    id              TEXT PRIMARY KEY NOT NULL,
    source          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    from_us         INTEGER NOT NULL,
    to_us           INTEGER NOT NULL,
    events          INTEGER,
    at_us           INTEGER NOT NULL,
    verified_at_us  INTEGER
);
