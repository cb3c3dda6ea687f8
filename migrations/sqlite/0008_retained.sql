-- Events that arrived as a broker's retained copy (MQTT retain flag), marked
-- in the output so a consumer can tell replayed state from a live message.
ALTER TABLE events ADD COLUMN retained INTEGER NOT NULL DEFAULT 0;
