-- Applications (the downstream apps calling the API), their keys, the audit trail and the
-- sealed-secret vault every later table points into.

CREATE TABLE applications (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE api_keys (
    prefix          text PRIMARY KEY CHECK (prefix ~ '^[a-z2-7]{8}$'),
    application_id  uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    secret_hash     bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes          text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX api_keys_application_idx ON api_keys (application_id);

-- Who did what, when. Details never hold secrets (the store redacts before writing).
CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    action          text NOT NULL,
    application_id  uuid,
    target          text,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_application_idx ON audit_log (application_id, at);

-- Every secret at rest, sealed by the keyring (envelope encryption). Other tables reference a
-- row here instead of holding ciphertext themselves, so `calbroker keys rotate` has one place
-- to re-wrap.
CREATE TABLE sealed_secrets (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    purpose     text NOT NULL,
    key_id      text NOT NULL,
    sealed      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz
);
CREATE INDEX sealed_secrets_key_idx ON sealed_secrets (key_id);
