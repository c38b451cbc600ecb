"""Schemathesis hooks for `make fuzz`: what "valid data rejected" means for calbroker.

Some rules cannot be written in JSON Schema because they relate two fields or depend on the
server's state: `end` after `start`, a span limit, a time zone this server knows, a cursor this
API issued, a mailbox domain some connection covers, a method this server is configured for.
A schema-valid request that breaks one of them gets a 422 naming the rule, which is correct, so
`schemathesis.toml` lets positive cases answer 422.

This check keeps that from hiding real drift: a schema-valid request must never be refused by a
rule the schema *does* express (a type, a pattern, a length, a required or unknown member: the
messages `calbroker.api.wire.field_error` writes for msgspec), nor be answered 400 or 415.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis

_SCHEMA_LEVEL = re.compile(
    r"^(Expected `|Object missing required field|Object contains unknown field|Invalid enum value"
    r"|must not contain control characters|must be an email address|must be an IANA time zone name"
    r"|at most \d+ (characters|items)$|1–200 characters of letters|must be in the years)"
)


@schemathesis.check
def rejections_name_rules_the_schema_cannot_express(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request refused by a rule the schema declares: the contract and the code disagree."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code in (400, 415):
        raise AssertionError(f"a schema-valid request was answered {response.status_code}: {response.text[:300]}")
    if response.status_code != 422:
        return None
    problem = json.loads(response.text)
    for error in problem.get("errors") or []:
        if _SCHEMA_LEVEL.match(error.get("message", "")):
            raise AssertionError(f"schema-valid {error['field']!r} refused by a declared rule: {error['message']}")
    return None
