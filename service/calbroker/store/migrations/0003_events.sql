-- Events applications book through calbroker (design §4, §5). A row is written before the
-- upstream call (state 'pending') and completed after it ('confirmed'), so a retry of a request
-- that died in between finds what was attempted and heals it instead of booking twice.

CREATE TABLE events (
    application_id      uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    event_id            text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 200),
    -- Bumped when a cancelled event_id is booked again: part of the idempotency marker.
    generation          integer NOT NULL DEFAULT 1 CHECK (generation >= 1),
    connection_id       uuid NOT NULL REFERENCES connections (id),
    organizer           text NOT NULL,
    -- Whose time the event takes (organizer, required and resource attendees of the same
    -- connection): what concurrent bookings with check_availability test against.
    mailboxes           text[] NOT NULL,
    starts_at           timestamptz NOT NULL,
    ends_at             timestamptz NOT NULL,
    state               text NOT NULL CHECK (state IN ('pending', 'confirmed', 'cancelled')),
    -- The write a pending row stands for (and, once confirmed or cancelled, the last one done).
    operation           text NOT NULL CHECK (operation IN ('create', 'update', 'cancel')),
    spec                jsonb NOT NULL,   -- the event as last requested
    fingerprint         text NOT NULL,    -- sha256 of the canonical spec: same body, same event
    applied             jsonb,            -- the spec Exchange holds after our last confirmed write
    marker              uuid NOT NULL,    -- Graph transactionId and EWS marker property
    upstream_id         text,
    ical_uid            text,
    teams_join_url      text,
    teams_meeting_id    text,             -- the Graph onlineMeeting behind an EWS event (hybrid)
    -- A request writing the row holds a lease until its deadline; a crashed one's lease lapses.
    lease_id            uuid,
    lease_until         timestamptz,
    version             integer NOT NULL DEFAULT 0,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    confirmed_at        timestamptz,
    cancelled_at        timestamptz,
    PRIMARY KEY (application_id, event_id),
    CHECK (ends_at > starts_at)
);

-- Bookings that still hold time: in flight, or confirmed recently (Exchange delivers
-- invitations to attendees' calendars asynchronously, so their free/busy may lag).
CREATE INDEX events_booked_mailboxes_idx ON events USING gin (mailboxes) WHERE state <> 'cancelled';
CREATE INDEX events_upstream_idx ON events (application_id, upstream_id) WHERE upstream_id IS NOT NULL;
CREATE INDEX events_ical_uid_idx ON events (application_id, ical_uid) WHERE ical_uid IS NOT NULL;
CREATE INDEX events_connection_idx ON events (connection_id);
