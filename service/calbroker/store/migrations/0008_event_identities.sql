-- Every copy of a booked event stays recognisable (issue 11): attendees keep a cancelled event's
-- copy, and a cancelled event_id booked again (a new generation) leaves the earlier generation's
-- copies behind. A row keeps the iCalUIds and markers of its earlier generations.
ALTER TABLE events ADD COLUMN earlier_ical_uids text[] NOT NULL DEFAULT '{}';
ALTER TABLE events ADD COLUMN earlier_markers uuid[] NOT NULL DEFAULT '{}';
CREATE INDEX events_marker_idx ON events (application_id, marker);
CREATE INDEX events_earlier_ical_uids_idx ON events USING gin (earlier_ical_uids);
CREATE INDEX events_earlier_markers_idx ON events USING gin (earlier_markers);
