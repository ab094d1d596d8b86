-- accord schema for PostgreSQL, version 3: each node's lease, so that a node
-- whose heartbeats stopped for longer is marked lost.
ALTER TABLE nodes ADD COLUMN lease_ttl DOUBLE PRECISION NOT NULL DEFAULT 30;
