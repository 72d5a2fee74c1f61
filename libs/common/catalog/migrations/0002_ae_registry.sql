-- The registry of remote DICOM nodes, owned by the auth service (ARCHITECTURE.md, Security).
-- Deny by default: an AE that is not here, or that calls from an address not listed, is refused.
CREATE TABLE IF NOT EXISTS ae_registry (
    ae_title         text PRIMARY KEY CHECK (ae_title ~ '^[ -~]{1,16}$' AND ae_title = btrim(ae_title)),
    hosts            text[] NOT NULL CHECK (cardinality(hosts) > 0),
    port             integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    permissions      text[] NOT NULL DEFAULT '{}'
                     CHECK (permissions <@ ARRAY['echo','store','find','move','get']::text[]),
    tls_required     boolean NOT NULL DEFAULT false,
    move_destination boolean NOT NULL DEFAULT true,
    description      text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
