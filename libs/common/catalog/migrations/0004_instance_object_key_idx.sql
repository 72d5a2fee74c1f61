-- The storage scrub asks, for each page of a bucket listing, which object keys an instance row
-- points at (PsycopgCatalog.catalogued_objects). Without this index every page is a sequential
-- scan of the instance table; INCLUDE (sha256) lets the answer come from the index alone.
-- Not UNIQUE: keys are unique by construction (they embed the SOP Instance UID), and ingestion
-- must not fail on a constraint that protects nothing the sop_instance_uid key does not.
CREATE INDEX IF NOT EXISTS instance_object_key_idx ON instance (object_key) INCLUDE (sha256);
