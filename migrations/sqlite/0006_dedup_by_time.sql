-- Content-keyed duplicates are found by when the message was on the wire
-- (occurred_at_us: gapless's receive time over MQTT, the app's receive time
-- from a history endpoint), not when gapless stored it: a message recovered
-- by the poller minutes later must still meet its MQTT copy.
DROP INDEX events_dedup;
CREATE INDEX events_dedup ON events (dedup_key, occurred_at_us) WHERE dedup_key IS NOT NULL;
