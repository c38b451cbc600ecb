"""Errors as Cronofy shapes them, "not supported" answers, and the URL policy on callback URLs."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from calbroker.providers.endpoints import AddressPolicy
from tests.compat.conftest import CallbackReceiver, CronofyWorld


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def account_token(cronofy_world: CronofyWorld, receiver: CallbackReceiver, http: requests.Session) -> str:
    callback = f"{receiver.url}/errors"
    accepted = http.post(
        f"{cronofy_world.base_url}/v1/service_account_authorizations",
        json={"email": "adele.vance@contoso.com", "scope": "read_only", "callback_url": callback},
        headers=_bearer(cronofy_world.service_account_tokens["contoso"]),
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    code = receiver.next()["body"]["authorization"]["code"]
    token = http.post(
        f"{cronofy_world.base_url}/oauth/token",
        json={
            "grant_type": "authorization_code",
            "client_id": cronofy_world.client_id,
            "client_secret": cronofy_world.client_secret,
            "code": code,
            "redirect_uri": callback,
        },
        headers={"Authorization": "Bearer None"},  # pycronofy's stale header: ignored on /oauth/*
        timeout=30,
    )
    assert token.status_code == 200, token.text
    return str(token.json()["access_token"])


@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        ("POST", "/v1/sequenced_availability", "not_supported"),
        ("POST", "/v1/availability_rules", "not_supported"),
        ("POST", "/v1/real_time_scheduling", "not_supported"),
        ("POST", "/v1/smart_invites", "not_supported"),
        ("POST", "/v1/element_tokens", "not_supported"),
        ("POST", "/v1/calendars", "not_supported"),
    ],
)
def test_what_has_no_counterpart_says_so(
    cronofy_world: CronofyWorld, http: requests.Session, method: str, path: str, error: str
) -> None:
    answer = http.request(method, f"{cronofy_world.base_url}{path}", json={}, timeout=30)
    assert answer.status_code == 501
    body = answer.json()
    assert body["error"] == error
    assert "docs/cronofy.md" in body["error_description"]


def test_an_unknown_token_is_401_and_a_missing_scope_403(
    cronofy_world: CronofyWorld, http: requests.Session, account_token: str
) -> None:
    refused = http.get(f"{cronofy_world.base_url}/v1/calendars", headers=_bearer("cbt_" + "x" * 43), timeout=30)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert http.get(f"{cronofy_world.base_url}/v1/calendars", timeout=30).status_code == 401
    calendars = http.get(f"{cronofy_world.base_url}/v1/calendars", headers=_bearer(account_token), timeout=30)
    calendar_id = calendars.json()["calendars"][0]["calendar_id"]
    write = http.post(
        f"{cronofy_world.base_url}/v1/calendars/{calendar_id}/events",
        json={"event_id": "x", "summary": "x", "start": "2030-01-01T09:00:00Z", "end": "2030-01-01T10:00:00Z"},
        headers=_bearer(account_token),
        timeout=30,
    )
    assert write.status_code == 403  # granted read_only
    assert write.json()["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"grant_type": "authorization_code", "code": "x", "redirect_uri": "https://a.example"}, "invalid_client"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "cbr_nope"}, "invalid_grant"),
    ],
)
def test_oauth_errors_are_rfc_6749(
    cronofy_world: CronofyWorld, http: requests.Session, body: dict[str, Any], error: str
) -> None:
    credentials = {"client_id": cronofy_world.client_id, "client_secret": cronofy_world.client_secret}
    if error == "invalid_client":
        credentials["client_secret"] = "cbs_wrong"
    answer = http.post(f"{cronofy_world.base_url}/oauth/token", data=credentials | body, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"] == error
    assert cronofy_world.client_secret not in answer.text


def test_input_errors_are_cronofys_422(cronofy_world: CronofyWorld, http: requests.Session, account_token: str) -> None:
    missing = http.post(
        f"{cronofy_world.base_url}/v1/availability",
        json={"participants": [{"members": [{"sub": "acc_x"}]}], "query_periods": []},
        headers=_bearer(account_token),
        timeout=30,
    )
    assert missing.status_code == 422
    assert missing.json() == {"errors": {"required_duration": [{"key": "errors.required", "description": "required"}]}}
    slots = http.post(
        f"{cronofy_world.base_url}/v1/availability",
        json={
            "participants": [{"members": [{"sub": "acc_x"}]}],
            "required_duration": {"minutes": 30},
            "query_slots": [{"start": "2030-01-01T09:00:00Z"}],
        },
        headers=_bearer(account_token),
        timeout=30,
    )
    assert slots.json()["errors"]["query_slots"][0]["key"] == "errors.not_supported"


def test_last_modified_needs_a_synced_mailbox_and_events(
    cronofy_world: CronofyWorld, http: requests.Session, account_token: str
) -> None:
    """The change feed answers `last_modified` for synced mailboxes only (a push channel syncs its
    account's); nothing here made Adele synced, so the 422 says how to get there."""
    answer = http.get(
        f"{cronofy_world.base_url}/v1/events?tzid=Etc/UTC&last_modified=2026-01-01T00:00:00Z",
        headers=_bearer(account_token),
        timeout=30,
    )
    assert answer.status_code == 422, answer.text
    [entry] = answer.json()["errors"]["last_modified"]
    assert entry["key"] == "errors.invalid"
    assert "not synced" in entry["description"]
    naive = http.get(
        f"{cronofy_world.base_url}/v1/events?tzid=Etc/UTC&last_modified=2026-01-01T00:00:00",
        headers=_bearer(account_token),
        timeout=30,
    )
    assert naive.json()["errors"]["last_modified"][0]["key"] == "errors.invalid"
    free_busy = http.get(
        f"{cronofy_world.base_url}/v1/free_busy?tzid=Etc/UTC&last_modified=2026-01-01T00:00:00Z",
        headers=_bearer(account_token),
        timeout=30,
    )
    assert free_busy.json()["errors"]["last_modified"][0]["key"] == "errors.not_supported"


def test_channels_refuse_what_they_cannot_honour(
    cronofy_world: CronofyWorld, http: requests.Session, account_token: str
) -> None:
    url = f"{cronofy_world.base_url}/v1/channels"
    assert http.post(url, json={"callback_url": "https://hooks.example/x"}, timeout=30).status_code == 401
    foreign = http.post(
        url,
        json={"callback_url": "https://hooks.example/x", "filters": {"calendar_ids": ["cal_other"]}},
        headers=_bearer(account_token),
        timeout=30,
    )
    assert foreign.status_code == 422
    assert "filters.calendar_ids[0]" in foreign.json()["errors"]
    metadata = http.post(
        url, json={"callback_url": "http://169.254.169.254/x"}, headers=_bearer(account_token), timeout=30
    )
    assert metadata.status_code == 422
    assert "metadata" in metadata.json()["errors"]["callback_url"][0]["description"]
    unknown = http.delete(f"{url}/chn_{'0' * 32}", headers=_bearer(account_token), timeout=30)
    assert unknown.status_code == 404
    assert http.get(url, headers=_bearer(account_token), timeout=30).json() == {"channels": []}


def test_callback_urls_pass_the_url_policy(cronofy_world: CronofyWorld, http: requests.Session) -> None:
    """Cloud metadata is refused even where the operator allows private addresses (as these tests do)."""
    answer = http.post(
        f"{cronofy_world.base_url}/v1/service_account_authorizations",
        json={"email": "adele.vance@contoso.com", "scope": "read_only", "callback_url": "http://169.254.169.254/x"},
        headers=_bearer(cronofy_world.service_account_tokens["contoso"]),
        timeout=30,
    )
    assert answer.status_code == 422
    assert "metadata" in answer.json()["errors"]["callback_url"][0]["description"]


def test_a_mailbox_outside_the_connection_is_reported_in_the_callback(
    cronofy_world: CronofyWorld, http: requests.Session, receiver: CallbackReceiver
) -> None:
    answer = http.post(
        f"{cronofy_world.base_url}/v1/service_account_authorizations",
        json={
            "service_account_authorizations": [
                {"email": "anna.schmidt@fabrikam.com", "scope": "read_only", "callback_url": f"{receiver.url}/outside"}
            ],
            "state": "batch-state",
        },
        headers=_bearer(cronofy_world.service_account_tokens["contoso"]),
        timeout=30,
    )
    assert answer.status_code == 202
    authorization = receiver.next()["body"]["authorization"]
    assert authorization["error"] == "mailbox_not_connected"
    assert authorization["state"] == "batch-state"
    assert "code" not in authorization


@pytest.mark.parametrize(
    ("address", "allow_private", "refused"),
    [
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("10.1.2.3", False, True),
        ("169.254.169.254", True, True),
        ("fd00:ec2::254", True, True),
        ("203.0.113.7", False, True),  # documentation range: reserved
        ("8.8.8.8", False, False),
    ],
)
def test_the_address_rule_every_outbound_call_obeys(address: str, allow_private: bool, refused: bool) -> None:
    assert (AddressPolicy(allow_private=allow_private).refusal(ipaddress.ip_address(address)) is not None) is refused
