-- The audit trail (issue 6), owned by the auth service: every audit.* event, append-only, in a
-- hash chain. Row n stores hash = sha256(hash of row n-1 + canonical), canonical being the
-- event as canonical JSON (sorted keys, no spaces; edge.auth.auditlog.canonical); row 1 follows
-- 64 zeros. `edge audit verify` recomputes it, so an edited, inserted or removed row shows.
--
-- Everything a query filters on is generated from `canonical`, so it cannot disagree with what
-- the chain covers: editing a derived column is impossible, editing `canonical` breaks the hash.

-- ISO 8601 with an offset (what the suite writes) parses the same under any setting; the cast
-- itself is only STABLE because other formats depend on DateStyle.
CREATE OR REPLACE FUNCTION edge_audit_time(value text) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT value::timestamptz $$;

-- UserIDs of the active participants (AE titles, logins, edge-<service>), in order.
CREATE OR REPLACE FUNCTION edge_audit_participants(event jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT coalesce(array_agg(p ->> 'user_id' ORDER BY n), '{}')
        FROM jsonb_array_elements(coalesce(event -> 'data' -> 'participants', '[]'))
             WITH ORDINALITY AS x(p, n)
    $$;

-- Study Instance UIDs among the participant objects (ID type (110180, DCM)).
CREATE OR REPLACE FUNCTION edge_audit_studies(event jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT coalesce(array_agg(o ->> 'object_id' ORDER BY n), '{}')
        FROM jsonb_array_elements(coalesce(event -> 'data' -> 'objects', '[]'))
             WITH ORDINALITY AS x(o, n)
        WHERE o -> 'id_type' ->> 'code' = '110180'
    $$;

CREATE TABLE IF NOT EXISTS audit_log (
    seq          bigint PRIMARY KEY CHECK (seq > 0),
    canonical    text NOT NULL,
    prev_hash    text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash         text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    event_id     uuid GENERATED ALWAYS AS ((canonical::jsonb ->> 'id')::uuid) STORED,
    event_type   text GENERATED ALWAYS AS (canonical::jsonb ->> 'type') STORED,
    event_code   text GENERATED ALWAYS AS (canonical::jsonb -> 'data' -> 'event' ->> 'code') STORED,
    action       text GENERATED ALWAYS AS (canonical::jsonb -> 'data' ->> 'action') STORED,
    outcome      smallint GENERATED ALWAYS AS (
                     (canonical::jsonb -> 'data' ->> 'outcome')::smallint) STORED,
    event_time   timestamptz GENERATED ALWAYS AS (
                     edge_audit_time(canonical::jsonb ->> 'time')) STORED,
    participants text[] GENERATED ALWAYS AS (edge_audit_participants(canonical::jsonb)) STORED,
    studies      text[] GENERATED ALWAYS AS (edge_audit_studies(canonical::jsonb)) STORED,
    CONSTRAINT audit_log_event_id_key UNIQUE (event_id)
);

CREATE INDEX IF NOT EXISTS audit_log_time_idx ON audit_log (event_time);
CREATE INDEX IF NOT EXISTS audit_log_type_idx ON audit_log (event_type, seq);
CREATE INDEX IF NOT EXISTS audit_log_participants_idx ON audit_log USING gin (participants);
CREATE INDEX IF NOT EXISTS audit_log_studies_idx ON audit_log USING gin (studies);

-- The role auth writes the trail as: it may read and append, never UPDATE, DELETE or TRUNCATE.
-- Roles belong to the cluster, not the database, so another database's migration (a test's, a
-- second deployment's) may have made it already, possibly at the same moment as this one.
-- LOGIN without a password: where connections need one, the operator sets it
-- (ALTER ROLE edge_audit_writer PASSWORD ...) and puts it in EDGE_AUDIT_DATABASE_URL.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edge_audit_writer') THEN
        CREATE ROLE edge_audit_writer LOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

REVOKE ALL ON audit_log FROM PUBLIC;
GRANT SELECT, INSERT ON audit_log TO edge_audit_writer;
