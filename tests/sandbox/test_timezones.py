"""Windows ↔ IANA names come from CLDR's windowsZones table (exchangelib's copy): every Windows id
resolves, and IANA names outside the zones the seed uses map to their Windows id too."""

from __future__ import annotations

from datetime import UTC

import pytest

from calbroker.sandbox.timezones import WINDOWS_TO_IANA, UnknownTimeZone, windows_name, zone


def test_every_windows_id_resolves_and_maps_back() -> None:
    assert len(WINDOWS_TO_IANA) > 100
    for ms_id in WINDOWS_TO_IANA:
        assert windows_name(getattr(zone(ms_id), "key", "UTC")) == ms_id


@pytest.mark.parametrize(
    ("iana", "windows"),
    [
        ("America/Detroit", "Eastern Standard Time"),
        ("Europe/Kyiv", "FLE Standard Time"),
        ("Asia/Kolkata", "India Standard Time"),
        ("Etc/UTC", "UTC"),
        ("Z", "UTC"),
        ("Not/AZone", "Not/AZone"),
    ],
)
def test_windows_name(iana: str, windows: str) -> None:
    assert windows_name(iana) == windows


def test_zone_accepts_windows_ids_in_any_case_and_refuses_unknown_names() -> None:
    assert getattr(zone("pacific standard time"), "key", None) == "America/Los_Angeles"
    assert zone("tzone://Microsoft/Utc") is UTC
    with pytest.raises(UnknownTimeZone):
        zone("Mars Standard Time")
