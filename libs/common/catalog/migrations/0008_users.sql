-- People and programs (issue 6), owned by the auth service: users with one role each, their
-- argon2id password hashes and lockout state, and the keys that sign access tokens.

-- Lockout lives here, not in memory: a restart or another replica must not reset the count.
-- failed_attempts counts consecutive failures since the last success or lock; lockouts counts
-- consecutive locks, so each lock lasts twice as long as the previous one (up to a cap).
CREATE TABLE IF NOT EXISTS auth_user (
    username            text PRIMARY KEY
                        CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role                text NOT NULL
                        CHECK (role IN ('admin', 'radiologist', 'him', 'requester', 'service')),
    password_hash       text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    disabled            boolean NOT NULL DEFAULT false,
    failed_attempts     integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    lockouts            integer NOT NULL DEFAULT 0 CHECK (lockouts >= 0),
    locked_until        timestamptz,
    last_login_at       timestamptz,
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Token signing keys. The private key (PKCS#8 PEM) is read by auth only; the public half is
-- served as a JWK. The newest key signs; when a newer one appears the older are retired and
-- stay published until every token they signed has expired, then they are deleted.
CREATE TABLE IF NOT EXISTS auth_signing_key (
    kid          text PRIMARY KEY,
    algorithm    text NOT NULL CHECK (algorithm IN ('ES256')),
    private_pem  text NOT NULL,
    public_jwk   jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);

CREATE INDEX IF NOT EXISTS auth_signing_key_created_idx ON auth_signing_key (created_at DESC);
