-- DICOM nodes (issue 6): per remote AE, which DICOM User Identity it must present (PS3.7
-- D.3.3.7) and whether its TLS client certificate is bound to it. ae_registry comes from 0002.
--
-- user_identity: 'none' (not supported: an identity offered is ignored), 'optional' (none is
-- fine; one offered must be valid), 'required' (an association without a valid one is
-- rejected). identity_kinds: which kinds are accepted: 'password' (username + passcode, type 2)
-- and 'jwt' (JSON Web Token, type 5).
-- tls_client_cert: the AE must associate over TLS presenting a certificate, signed by our CA,
-- whose subject CN or a SAN DNS name is its AE title.
ALTER TABLE ae_registry
    ADD COLUMN IF NOT EXISTS user_identity text NOT NULL DEFAULT 'none'
        CHECK (user_identity IN ('none', 'optional', 'required')),
    ADD COLUMN IF NOT EXISTS identity_kinds text[] NOT NULL DEFAULT ARRAY['password', 'jwt']
        CHECK (identity_kinds <@ ARRAY['password', 'jwt']::text[]),
    ADD COLUMN IF NOT EXISTS tls_client_cert boolean NOT NULL DEFAULT false;

ALTER TABLE ae_registry
    ADD CONSTRAINT ae_registry_identity_kinds_given
        CHECK (user_identity = 'none' OR cardinality(identity_kinds) > 0);
