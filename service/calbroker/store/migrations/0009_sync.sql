-- The synced copy of mailboxes' busy time (issue 12): which mailboxes are kept in sync, each one's
-- sync state and upstream subscription, the busy cache itself, and the changes each round saw.

-- Which mailboxes of a connection an application wants kept in sync: every mailbox in the
-- connection's scope ('all'), or the ones it listed ('list'). No row: nothing is synced.
CREATE TABLE sync_scopes (
    connection_id   uuid PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    mode            text NOT NULL CHECK (mode IN ('all', 'list')),
    mailboxes       text[] NOT NULL DEFAULT '{}',
    -- What the worker could not do when it last applied the scope (e.g. the cap cut the list).
    problem         text,
    applied_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per synced mailbox of a connection. Every timestamp here is the database's clock, so
-- replicas with drifting clocks agree on what is fresh.
CREATE TABLE sync_mailboxes (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    connection_id           uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    mailbox                 text NOT NULL,
    -- pending: never synced; active: the cache holds the window; failed: the last round failed
    -- (last_error says why); unsupported: upstream will not let this mailbox be synced.
    state                   text NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'active', 'failed', 'unsupported')),
    window_start            timestamptz,
    window_end              timestamptz,
    -- The provider's cursor into the window: Graph's deltaLink, EWS's SyncFolderItems SyncState.
    cursor                  text,
    working_hours           jsonb,
    -- When the last completed round started: the cache reflects upstream as of at least then.
    synced_at               timestamptz,
    full_synced_at          timestamptz,
    -- The latest sign that upstream changed (a notification, a stream event, a write we made).
    last_notified_at        timestamptz,
    -- Rounds asked for and rounds taken by a job: a new request after a job claimed its round
    -- gets a new job (job dedupe keys carry the round), so no change signal is ever swallowed.
    requested_round         bigint NOT NULL DEFAULT 0,
    claimed_round           bigint NOT NULL DEFAULT 0,
    -- Set when only a full round will do (new mailbox, expired cursor, missed notifications).
    full_requested_at       timestamptz DEFAULT now(),
    last_error              text,
    failures                integer NOT NULL DEFAULT 0,
    -- The change feed: a Graph subscription, an EWS streaming subscription, or EWS polling.
    subscription_state      text NOT NULL DEFAULT 'none'
                            CHECK (subscription_state IN ('none', 'active', 'polling', 'failed', 'unsupported')),
    subscription_id         text,
    subscription_expires_at timestamptz,
    client_state_hash       bytea CHECK (client_state_hash IS NULL OR length(client_state_hash) = 32),
    subscription_error      text,
    -- A lifecycle event (reauthorizationRequired, subscriptionRemoved, missed) not yet handled.
    lifecycle_pending_at    timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, mailbox)
);
CREATE UNIQUE INDEX sync_mailboxes_subscription_idx ON sync_mailboxes (subscription_id)
    WHERE subscription_id IS NOT NULL;
CREATE INDEX sync_mailboxes_synced_idx ON sync_mailboxes (synced_at NULLS FIRST);

-- Busy time of synced mailboxes: what getSchedule / GetUserAvailability would say, no subjects.
-- Free items are not stored. One index-only range scan per mailbox reads a window.
CREATE TABLE busy_cache (
    sync_id         uuid NOT NULL REFERENCES sync_mailboxes (id) ON DELETE CASCADE,
    upstream_id     text NOT NULL,
    -- The series an occurrence or exception belongs to (Graph seriesMasterId, EWS UID).
    series_id       text,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    status          text NOT NULL CHECK (status IN ('busy', 'tentative', 'oof', 'working_elsewhere')),
    PRIMARY KEY (sync_id, upstream_id),
    CHECK (ends_at > starts_at)
);
CREATE INDEX busy_cache_window_idx ON busy_cache (sync_id, starts_at) INCLUDE (ends_at, status);
CREATE INDEX busy_cache_series_idx ON busy_cache (sync_id, series_id) WHERE series_id IS NOT NULL;

-- What each sync round changed, per mailbox: the feed change webhooks are built from
-- (`mailbox.changed` with `changes_since`, and managed events changed or deleted in Outlook).
CREATE TABLE sync_changes (
    id              bigserial PRIMARY KEY,
    sync_id         uuid NOT NULL REFERENCES sync_mailboxes (id) ON DELETE CASCADE,
    seen_at         timestamptz NOT NULL DEFAULT now(),
    full_round      boolean NOT NULL,
    changed         text[] NOT NULL,
    removed         text[] NOT NULL
);
CREATE INDEX sync_changes_mailbox_idx ON sync_changes (sync_id, id);
CREATE INDEX sync_changes_seen_idx ON sync_changes (seen_at);

-- The notification receiver's heartbeat: a gap means Graph may have given up on notifications
-- it could not deliver, so every mailbox is re-synced at once.
CREATE TABLE sync_receiver (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seen_at         timestamptz NOT NULL,
    outage_from     timestamptz,
    outage_to       timestamptz
);

-- Periodic work shared by worker replicas: the replica that moves `ran_at` forward runs it.
CREATE TABLE worker_ticks (
    name            text PRIMARY KEY,
    ran_at          timestamptz NOT NULL
);
