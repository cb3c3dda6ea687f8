-- The release step asks for unreleased events below the watermark OR held
-- longer than max_hold. SQLite plans `seq IS NULL` on the UNIQUE seq index
-- as one row and then visits every unreleased event per batch (quadratic
-- while a long poll window is held back), so each half of the question gets
-- its own partial index and the query names them.
CREATE INDEX events_unreleased_received ON events (received_at_us) WHERE seq IS NULL;
