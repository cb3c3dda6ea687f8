-- The store's tables, as migrations/sqlite builds them, in Postgres types:
-- SQLite's INTEGER is BIGINT (or BOOLEAN for its 0/1 flags), BLOB is
-- BYTEA. `events.rowid` and `gaps.rowid` are explicit here (SQLite's are
-- implicit): arrival order, which the release query, `status --watch` and
-- the newest-gaps query read.
-- tests/it/postgres.rs keeps the two schemas in step.
CREATE TABLE events (
    rowid           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id              TEXT PRIMARY KEY NOT NULL,
    source          TEXT NOT NULL,
    origin          TEXT NOT NULL,
    occurred_at_us  BIGINT NOT NULL,
    received_at_us  BIGINT NOT NULL,
    type            TEXT NOT NULL,
    subject         TEXT,
    org             TEXT,
    payload         TEXT NOT NULL,
    seq             BIGINT UNIQUE,
    late            BOOLEAN NOT NULL DEFAULT FALSE,
    ce_source       TEXT,
    dataschema      TEXT,
    dedup_key       TEXT,
    validation      TEXT,
    retained        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX events_unreleased ON events (occurred_at_us) WHERE seq IS NULL;
CREATE INDEX events_unreleased_received ON events (received_at_us) WHERE seq IS NULL;
CREATE INDEX events_dedup ON events (dedup_key, occurred_at_us) WHERE dedup_key IS NOT NULL;
CREATE INDEX events_pending ON events (received_at_us) WHERE validation = 'pending';

CREATE TABLE cursors (
    sink            TEXT PRIMARY KEY NOT NULL,
    seq             BIGINT NOT NULL,
    updated_at_us   BIGINT NOT NULL
);

CREATE TABLE rejected (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    detail          TEXT NOT NULL,
    bytes           BYTEA NOT NULL,
    size            BIGINT NOT NULL,
    at_us           BIGINT NOT NULL
);

CREATE TABLE watermarks (
    source              TEXT PRIMARY KEY NOT NULL,
    verified_until_us   BIGINT NOT NULL,
    updated_at_us       BIGINT NOT NULL
);

CREATE TABLE stream_state (
    key     TEXT PRIMARY KEY NOT NULL,
    value   BIGINT NOT NULL
);

CREATE TABLE dead_letters (
    sink        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    event_id    TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    last_status BIGINT,
    last_error  TEXT NOT NULL,
    at_us       BIGINT NOT NULL,
    retry       BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (sink, seq)
);

CREATE TABLE sink_state (
    sink            TEXT PRIMARY KEY NOT NULL,
    disabled_reason TEXT,
    at_us           BIGINT NOT NULL
);

CREATE TABLE sink_requests (
    sink            TEXT PRIMARY KEY NOT NULL,
    replay_from_seq BIGINT NOT NULL,
    at_us           BIGINT NOT NULL
);

CREATE TABLE schemas (
    url             TEXT PRIMARY KEY,
    etag            TEXT,
    body            TEXT NOT NULL,
    fetched_at_us   BIGINT NOT NULL
);

CREATE TABLE gaps (
    rowid           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id              TEXT PRIMARY KEY NOT NULL,
    source          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    from_us         BIGINT NOT NULL,
    to_us           BIGINT NOT NULL,
    events          BIGINT,
    at_us           BIGINT NOT NULL,
    verified_at_us  BIGINT
);

CREATE TABLE daemon (
    id              BIGINT PRIMARY KEY CHECK (id = 1),
    admin_addr      TEXT NOT NULL,
    pid             BIGINT NOT NULL,
    started_at_us   BIGINT NOT NULL
);
