-- Token revocation (issue 6): per user, the time before which its access tokens are no longer
-- valid. Set (to now, never moved back) when the user is locked (by an admin or after repeated
-- failures), removed, given a new password or role, or revoked outright. Every service's token
-- verifier refuses a token whose `iat` is earlier than its user's time (edge.common.revocation);
-- auth announces each change as `auth.tokens_revoked` and serves the recent ones (RPC
-- `auth.revocations`) to verifiers that start or reconnect.
--
-- A table of its own, not a column of auth_user: removing a user must not forget that the
-- tokens issued to that name are void, and a user re-created under the name gets new ones only.
CREATE TABLE IF NOT EXISTS auth_token_revocation (
    username    text PRIMARY KEY
                CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    not_before  timestamptz NOT NULL,
    reason      text NOT NULL
                CHECK (reason IN ('locked', 'lockout', 'removed', 'password', 'role', 'revoked'))
);

-- The map verifiers load holds the changes younger than a token's lifetime.
CREATE INDEX IF NOT EXISTS auth_token_revocation_not_before_idx
    ON auth_token_revocation (not_before);
