"""openapi/openapi.json is generated from the code (`make openapi`); this fails when they drift."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from calbroker.api.wire import EMAIL_PATTERN, EVENT_ID_PATTERN, INSTANT_PATTERN, TEXT_PATTERN, TZID_PATTERN
from calbroker.app import create_app, openapi_document
from calbroker.config import Settings
from calbroker.store.applications import IssuedKey

COMMITTED = Path(__file__).parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_code(tmp_path: Path) -> None:
    generated = json.dumps(openapi_document(create_app(Settings(data_dir=tmp_path))), indent=2, sort_keys=True)
    committed = COMMITTED.read_text()
    assert generated + "\n" == committed, "openapi/openapi.json is stale: run `make openapi` and commit it"


def test_every_v1_operation_documents_its_problems() -> None:
    document = json.loads(COMMITTED.read_text())
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "401" in responses, f"{method.upper()} {path} does not document 401"
            problem = responses["401"]["content"]["application/problem+json"]
            assert problem["schema"], f"{method.upper()} {path} 401 has no schema"


def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(COMMITTED.read_text())
    return document


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in _document()["paths"].items() for method, op in ops.items()]


_VERBS = (
    "get", "list", "create", "upsert", "update", "cancel", "revoke", "verify", "delete",
    "rotate", "enable", "retry", "replay",
)  # fmt: skip


def test_every_operation_id_is_a_camel_case_verb_phrase() -> None:
    ids = [op["operationId"] for _m, _p, op in _operations()]
    assert len(ids) == len(set(ids))
    for operation_id in ids:
        assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", operation_id), operation_id
        assert operation_id.startswith(_VERBS), operation_id


def test_every_schema_and_every_property_is_described() -> None:
    schemas = _document()["components"]["schemas"]
    undescribed = [name for name, schema in schemas.items() if not schema.get("description")]
    assert undescribed == []
    for name, schema in schemas.items():
        for prop, spec in schema.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{prop} has no description"


def test_problems_are_typed_everywhere() -> None:
    document = _document()
    schemas = document["components"]["schemas"]
    assert {"type", "title", "status", "detail", "errors", "request_id"} <= set(schemas["Problem"]["properties"])
    for method, path, op in _operations():
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert response["headers"]["X-Request-Id"]
    embedded = "#/components/schemas/EmbeddedProblem"
    for schema, prop in (("MailboxFreeBusy", "error"), ("MemberError", "problem"), ("VerificationOut", "error")):
        assert embedded in _refs(schemas[schema]["properties"][prop]), (schema, prop)


def _refs(spec: Any) -> set[str]:
    if isinstance(spec, dict):
        found = {spec["$ref"]} if "$ref" in spec else set()
        return found.union(*(_refs(v) for v in spec.values()))
    if isinstance(spec, list):
        return set().union(*(_refs(v) for v in spec))
    return set()


def test_each_operation_documents_the_problems_it_can_answer_and_no_others() -> None:
    for method, path, op in _operations():
        if not path.startswith("/v1/"):
            continue
        statuses = set(op["responses"])
        assert {"401", "500", "503"} <= statuses, (method, path)
        takes_body = "requestBody" in op
        assert ("415" in statuses) == takes_body, (method, path)
        assert ("400" in statuses) == takes_body, (method, path)
        if takes_body or op.get("parameters"):
            # A malformed id in these paths is simply not found (404).
            assert "422" in statuses or path.startswith(("/v1/connections/{", "/v1/channels/{")), (method, path)
        assert "Retry-After" in op["responses"]["503"]["headers"], (method, path)
    me = _document()["paths"]["/v1/me"]["get"]["responses"]
    assert set(me) == {"200", "401", "500", "503"}


def test_enforced_patterns_are_declared() -> None:
    document = _document()
    schemas = document["components"]["schemas"]
    event = document["paths"]["/v1/events/{event_id}"]
    [event_id] = [p for p in event["get"]["parameters"] if p["name"] == "event_id"]
    assert event_id["schema"]["pattern"] == EVENT_ID_PATTERN
    assert schemas["EventIn"]["properties"]["organizer"]["pattern"] == EMAIL_PATTERN
    assert schemas["EventIn"]["properties"]["summary"]["pattern"] == TEXT_PATTERN
    assert schemas["EventIn"]["properties"]["summary"]["maxLength"] == 255
    assert schemas["FreeBusyRequest"]["properties"]["mailboxes"]["items"]["pattern"] == EMAIL_PATTERN
    assert schemas["FreeBusyRequest"]["properties"]["start"]["pattern"] == INSTANT_PATTERN
    assert schemas["AvailabilityRequest"]["properties"]["tzid"]["pattern"] == TZID_PATTERN
    [mailbox] = [p for p in document["paths"]["/v1/events"]["get"]["parameters"] if p["name"] == "mailbox"]
    assert mailbox["schema"]["pattern"] == EMAIL_PATTERN


def test_bodies_have_examples() -> None:
    for method, path, op in _operations():
        if "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema.get("examples"), (method, path)


async def test_options_and_allow_list_every_method_of_a_path(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
) -> None:
    auth = {"Authorization": f"Bearer {api_key.token}"}
    some = "6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c"
    for path, methods in (
        (f"/v1/connections/{some}", {"GET", "DELETE", "OPTIONS"}),
        ("/v1/events/booking-1", {"GET", "PUT", "DELETE", "OPTIONS"}),
        ("/v1/free_busy", {"POST", "OPTIONS"}),
    ):
        options = await client.options(path, headers=auth)
        assert options.status_code == 204, options.text
        assert set(options.headers["allow"].split(", ")) == methods, path
        refused = await client.patch(path, headers=auth, json={})
        assert refused.status_code == 405
        assert set(refused.headers["allow"].split(", ")) == methods, path


def test_every_request_integer_declares_its_bounds() -> None:
    """Litestar drops a minimum of 0 (it tests constraints for truth); the contract must still say it."""
    schemas = _document()["components"]["schemas"]
    for name, schema in schemas.items():
        if schema.get("additionalProperties") is not False:
            continue  # responses
        for prop, spec in schema.get("properties", {}).items():
            types = {spec.get("type")} | {s.get("type") for s in spec.get("oneOf", [])}
            if "integer" in types and prop != "required":
                assert "minimum" in spec, f"{name}.{prop}: {spec}"
                assert "maximum" in spec, f"{name}.{prop}: {spec}"
