-- The Cronofy-compatible surface (design §8, docs/cronofy.md): an application's Cronofy client
-- credentials, the mailboxes it authorized (Cronofy accounts), its grants and tokens, one-time
-- codes, and browser authorizations waiting on the connect pages. Tokens, codes and the client
-- secret are bearer secrets: only their SHA-256 is stored.

CREATE TABLE cronofy_clients (
    application_id  uuid PRIMARY KEY REFERENCES applications (id) ON DELETE CASCADE,
    client_id       text NOT NULL UNIQUE,
    secret_hash     bytea NOT NULL CHECK (length(secret_hash) = 32),
    -- The same secret, sealed: push notifications are signed with it (Cronofy-HMAC-SHA256), so a
    -- hash alone would not do.
    secret_id       uuid REFERENCES sealed_secrets (id) ON DELETE SET NULL,
    -- Derives the opaque acc_/cal_/pro_/ser_ ids; kept when the secret is rotated, so ids never change.
    id_key          bytea NOT NULL CHECK (length(id_key) = 32),
    created_at      timestamptz NOT NULL DEFAULT now(),
    rotated_at      timestamptz
);

-- A mailbox an application was authorized for: a Cronofy account with one calendar.
CREATE TABLE cronofy_accounts (
    account_id      text PRIMARY KEY,
    application_id  uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    connection_id   uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    mailbox         text NOT NULL,
    calendar_id     text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (application_id, mailbox)
);

-- What a token stands for: an account (account token) or a connection (service-account token).
-- An access token and the refresh token that renews it share a grant; revoking either ends both.
CREATE TABLE cronofy_grants (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    application_id  uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    account_id      text REFERENCES cronofy_accounts (account_id) ON DELETE CASCADE,
    connection_id   uuid REFERENCES connections (id) ON DELETE CASCADE,
    scope           text NOT NULL,
    refresh_hash    bytea UNIQUE CHECK (length(refresh_hash) = 32),
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK ((account_id IS NULL) <> (connection_id IS NULL))
);
CREATE INDEX cronofy_grants_application_idx ON cronofy_grants (application_id);

CREATE TABLE cronofy_access_tokens (
    token_hash      bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    grant_id        uuid NOT NULL REFERENCES cronofy_grants (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz   -- NULL: until the grant is revoked (operator-issued service-account tokens)
);
CREATE INDEX cronofy_access_tokens_grant_idx ON cronofy_access_tokens (grant_id);

-- One-time authorization codes (RFC 6749 §4.1.2): bound to the redirect URI they were sent to.
-- A second redemption revokes the grant the first one made.
CREATE TABLE cronofy_codes (
    code_hash       bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    application_id  uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    redirect_uri    text NOT NULL,
    account_id      text REFERENCES cronofy_accounts (account_id) ON DELETE CASCADE,
    connection_id   uuid REFERENCES connections (id) ON DELETE CASCADE,
    scope           text NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    grant_id        uuid REFERENCES cronofy_grants (id) ON DELETE SET NULL,
    CHECK ((account_id IS NULL) <> (connection_id IS NULL))
);

-- A browser sent through `/oauth/authorize` to calbroker's connect pages, until it comes back.
CREATE TABLE cronofy_authorizations (
    state_hash      bytea PRIMARY KEY CHECK (length(state_hash) = 32),
    application_id  uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    link_id         uuid NOT NULL REFERENCES connect_links (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('account', 'service_account')),
    redirect_uri    text NOT NULL,
    scope           text NOT NULL,
    app_state       text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
