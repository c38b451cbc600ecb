-- Channels (issue 13): signed webhooks to applications, delivered at least once from an outbox.

-- Where an application wants to be told, and what about. `flavour` names the payload shape and
-- signing scheme ('standard': Standard Webhooks); other flavours plug into the same outbox.
CREATE TABLE channels (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    application_id      uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    callback_url        text NOT NULL CHECK (length(callback_url) BETWEEN 1 AND 2000),
    flavour             text NOT NULL DEFAULT 'standard',
    -- The notice types it takes (every type when the application named none).
    types               text[] NOT NULL,
    -- Empty: every mailbox / every connection of the application.
    mailboxes           text[] NOT NULL DEFAULT '{}',
    connection_ids      uuid[] NOT NULL DEFAULT '{}',
    only_managed        boolean NOT NULL DEFAULT false,
    state               text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    disabled_reason     text,
    disabled_at         timestamptz,
    -- The first failed attempt since the last delivered one: a channel failing for days is disabled.
    failing_since       timestamptz,
    last_delivered_at   timestamptz,
    -- Deliveries asked for and taken by a job: a notice after a job took its number gets a new job
    -- (job dedupe keys carry the number), so no notice waits for the next tick.
    requested_run       bigint NOT NULL DEFAULT 0,
    claimed_run         bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channels_application_idx ON channels (application_id, created_at);

-- A channel's signing secrets (sealed in sealed_secrets). The current one has no retires_at; after
-- a rotation the previous one keeps signing until retires_at, so receivers can switch over.
CREATE TABLE channel_secrets (
    secret_id           uuid PRIMARY KEY REFERENCES sealed_secrets (id),
    channel_id          uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    retires_at          timestamptz
);
CREATE INDEX channel_secrets_channel_idx ON channel_secrets (channel_id, created_at);

-- The outbox: one row per logical delivery (its id is the stable `webhook-id`). Producers insert
-- rows in the transaction that made the change, so a notice exists if and only if its change does.
CREATE TABLE channel_messages (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                 bigserial NOT NULL UNIQUE,
    channel_id          uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    type                text NOT NULL,
    data                jsonb NOT NULL,
    -- Data that is a secret at rest (an authorize link): sealed, merged into the body when sent.
    sealed_id           uuid REFERENCES sealed_secrets (id),
    occurred_at         timestamptz NOT NULL DEFAULT now(),
    -- Deliveries of one key go out in order: one is attempted only when every earlier one is finished.
    order_key           text NOT NULL,
    -- At most one undelivered message per (channel, key) waits: later notices merge into it.
    coalesce_key        text,
    -- pending: waiting for its next attempt; sending: an attempt holds the lease; delivered; failed
    -- (the schedule is spent, or the receiver said 410).
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    -- Attempts the current schedule has used (a manual retry or a replay starts a new one).
    scheduled           integer NOT NULL DEFAULT 0,
    -- How many attempts the current schedule allows (a manual retry allows one).
    allowed             integer NOT NULL,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_id            uuid,
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
CREATE UNIQUE INDEX channel_messages_coalesce_idx ON channel_messages (channel_id, coalesce_key)
    WHERE state = 'pending' AND coalesce_key IS NOT NULL;
CREATE INDEX channel_messages_due_idx ON channel_messages (next_attempt_at) WHERE state = 'pending';
CREATE INDEX channel_messages_lease_idx ON channel_messages (lease_until) WHERE state = 'sending';
CREATE INDEX channel_messages_order_idx ON channel_messages (channel_id, order_key, seq)
    WHERE state IN ('pending', 'sending');
CREATE INDEX channel_messages_channel_idx ON channel_messages (channel_id, seq);
CREATE INDEX channel_messages_finished_idx ON channel_messages (finished_at) WHERE finished_at IS NOT NULL;

-- Every attempt: what the receiver answered (status, first KB), how long it took, or why no answer came.
CREATE TABLE channel_attempts (
    id                  bigserial PRIMARY KEY,
    message_id          uuid NOT NULL REFERENCES channel_messages (id) ON DELETE CASCADE,
    number              integer NOT NULL,
    started_at          timestamptz NOT NULL,
    latency_ms          integer NOT NULL,
    status_code         integer,
    error_class         text,
    response_excerpt    text NOT NULL DEFAULT '',
    outcome             text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed', 'gone'))
);
CREATE INDEX channel_attempts_message_idx ON channel_attempts (message_id, id);

-- Connection events from the health checker: consecutive authorization failures, and whether the
-- disconnection was announced (once per episode).
ALTER TABLE connection_checks ADD COLUMN auth_failures integer NOT NULL DEFAULT 0;
ALTER TABLE connection_checks ADD COLUMN disconnected_at timestamptz;

-- The change feed tells items that stopped taking time (shown as free, cancelled) from items that are
-- gone, so `GET /v1/events?changed_since=` and event.deleted say "deleted" only when upstream did.
ALTER TABLE sync_changes ADD COLUMN freed text[] NOT NULL DEFAULT '{}';
