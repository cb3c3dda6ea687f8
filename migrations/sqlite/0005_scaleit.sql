-- Profiles without ids or a single origin (ScaleIT): per-event CloudEvent
-- source and dataschema, a content key deduplicated within a time window,
-- and the schema validation state ('pending' rows are held from release).
ALTER TABLE events ADD COLUMN ce_source TEXT;
ALTER TABLE events ADD COLUMN dataschema TEXT;
ALTER TABLE events ADD COLUMN dedup_key TEXT;
ALTER TABLE events ADD COLUMN validation TEXT;
CREATE INDEX events_dedup ON events (dedup_key, received_at_us) WHERE dedup_key IS NOT NULL;
CREATE INDEX events_pending ON events (received_at_us) WHERE validation = 'pending';

-- Fetched JSON Schemas, so a restart validates without the schema service.
CREATE TABLE schemas (
    url TEXT PRIMARY KEY,
    etag TEXT,
    body TEXT NOT NULL,
    fetched_at_us INTEGER NOT NULL
);
