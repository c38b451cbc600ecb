"""calbroker: one API for free/busy, availability and events across Microsoft 365 and Exchange."""
