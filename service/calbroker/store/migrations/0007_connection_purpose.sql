-- What a connection is for: 'calendars' (free/busy, availability, events) or 'online_meetings'
-- (Teams meetings only, for a hybrid tenant whose calendars another connection serves).
ALTER TABLE connections ADD COLUMN purpose text NOT NULL DEFAULT 'calendars'
    CHECK (purpose IN ('calendars', 'online_meetings'));
ALTER TABLE connections ADD CONSTRAINT connections_purpose_kind_check
    CHECK (purpose = 'calendars' OR (kind = 'graph' AND method IN ('graph_consent', 'graph_app')));
