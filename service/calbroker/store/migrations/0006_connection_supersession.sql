-- Connecting an organisation again replaces its connection (issue 11): the older one becomes
-- 'superseded', points at its replacement and loses its credentials; events booked through it
-- follow `superseded_by` to the connection that serves them now.
ALTER TABLE connections ADD COLUMN superseded_by uuid REFERENCES connections (id);
ALTER TABLE connections DROP CONSTRAINT connections_status_check;
ALTER TABLE connections ADD CONSTRAINT connections_status_check
    CHECK (status IN ('active', 'degraded', 'superseded', 'revoked'));
ALTER TABLE connections ADD CONSTRAINT connections_superseded_check
    CHECK ((status = 'superseded') <= (superseded_by IS NOT NULL));
