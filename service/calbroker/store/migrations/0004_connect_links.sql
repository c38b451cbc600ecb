-- Authorize links (design §7) and what the health checker needs to re-verify a connection.

-- A link is a bearer secret in a URL: only its SHA-256 is stored. `link_key` signs the link's
-- form tokens (CSRF) and derives PKCE verifiers, so neither needs a table of its own.
CREATE TABLE connect_links (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash          bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    application_id      uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    redirect_url        text NOT NULL,
    state               text,
    methods             text[] NOT NULL CHECK (cardinality(methods) >= 1),
    access_level        text CHECK (access_level IN ('full', 'restricted', 'free_busy')),
    link_key            bytea NOT NULL CHECK (length(link_key) = 32),
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    used_at             timestamptz,
    connection_id       uuid REFERENCES connections (id) ON DELETE SET NULL,
    -- Verification attempts in the current window: a rate limit every replica sees.
    attempts            integer NOT NULL DEFAULT 0,
    attempts_since      timestamptz,
    -- The pending round trip through Microsoft (admin consent or delegated sign-in): the hash of
    -- the `state` sent to Entra, the browser session that started it, and what the admin typed.
    flow_state_hash     bytea UNIQUE CHECK (length(flow_state_hash) = 32),
    flow_session_hash   bytea CHECK (length(flow_session_hash) = 32),
    flow_method         text,
    flow_form           jsonb,
    flow_started_at     timestamptz,
    consented_tenant    text
);
CREATE INDEX connect_links_application_idx ON connect_links (application_id, created_at);

-- Per connection: the mailbox its health check reads (the one verified at connect time), when
-- the next check is due, and which secret-expiry warnings were already raised.
CREATE TABLE connection_checks (
    connection_id       uuid PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    test_mailbox        text NOT NULL,
    next_check_at       timestamptz NOT NULL DEFAULT now(),
    last_checked_at     timestamptz,
    expiry_warned_days  integer
);
CREATE INDEX connection_checks_due_idx ON connection_checks (next_check_at);
