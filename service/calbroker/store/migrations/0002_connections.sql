-- Connections: how an application reaches one organisation's mailboxes (design §4).
-- Credentials live sealed in sealed_secrets; a revoked connection keeps its row (events refer
-- to it) but loses its secret.

CREATE TABLE connections (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    application_id      uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('graph', 'ews')),
    method              text NOT NULL CHECK (method IN ('graph_consent', 'graph_app', 'graph_delegated', 'ews')),
    access_level        text NOT NULL CHECK (access_level IN ('full', 'restricted', 'free_busy')),
    display_name        text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    cloud               text NOT NULL DEFAULT 'global',
    tenant_id           text,
    endpoint            text,
    domains             text[] NOT NULL CHECK (cardinality(domains) BETWEEN 1 AND 100),
    allowed_mailboxes   text[] NOT NULL DEFAULT '{}',
    secret_id           uuid REFERENCES sealed_secrets (id) ON DELETE SET NULL,
    secret_expires_at   timestamptz,
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'degraded', 'revoked')),
    last_verified_at    timestamptz,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'ews' OR endpoint IS NOT NULL),
    CHECK (kind <> 'graph' OR tenant_id IS NOT NULL)
);
CREATE INDEX connections_application_idx ON connections (application_id) WHERE status <> 'revoked';
CREATE INDEX connections_domains_idx ON connections USING gin (domains);
