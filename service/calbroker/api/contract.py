"""The OpenAPI document as clients read it: what Litestar's generator does not say on its own.

Run once on the document Litestar built (the same object `/openapi.json`, `/docs` and
`openapi/openapi.json` are made from):

- every schema is described by its Struct's docstring (Litestar describes only enums), and a
  request schema whose Struct forbids unknown members says so (`additionalProperties: false`);
- Litestar adds a `400` to every operation with a parameter, but calbroker answers bad parameters
  with `422` and uses `400` only for a body that is not JSON: the automatic one is removed;
- every response carries `X-Request-Id`, and the responses that can say when to retry
  (`409`, `503`) declare `Retry-After`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import msgspec
from litestar.openapi.spec import Components, OpenAPI, OpenAPIHeader, OpenAPIResponse, Reference, Schema

__all__ = ["refine"]

_PROBLEM_MEDIA_TYPE = "application/problem+json"
_HEADERS = {
    "X-Request-Id": OpenAPIHeader(
        description="The request's id: the caller's own `X-Request-Id` if well-formed, else a new one. Every log "
        "line of the request carries it.",
        schema=Schema(type="string"),  # type: ignore[arg-type]
    ),
    "Retry-After": OpenAPIHeader(
        description="Seconds to wait before retrying, when calbroker (or Microsoft behind it) knows.",
        schema=Schema(type="integer", minimum=1),  # type: ignore[arg-type]
    ),
}


def _structs(root: type[msgspec.Struct]) -> Iterable[type[msgspec.Struct]]:
    for sub in root.__subclasses__():
        yield sub
        yield from _structs(sub)


def _describe_schemas(components: Components) -> None:
    ours = {s.__name__: s for s in _structs(msgspec.Struct) if s.__module__.startswith("calbroker.api")}
    for name, schema in (components.schemas or {}).items():
        struct = ours.get(name)
        if struct is None or not isinstance(schema, Schema):
            continue
        doc = struct.__dict__.get("__doc__")
        if doc and not schema.description:
            schema.description = inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ")
        if struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False


def _headers_of(response: OpenAPIResponse, status: str) -> dict[str, OpenAPIHeader | Reference]:
    headers: dict[str, OpenAPIHeader | Reference] = dict(response.headers or {})
    headers["X-Request-Id"] = Reference(ref="#/components/headers/X-Request-Id")
    if status in ("409", "503"):
        headers["Retry-After"] = Reference(ref="#/components/headers/Retry-After")
    return headers


def refine(document: OpenAPI) -> OpenAPI:
    """Describe, correct and complete the generated document in place; returns it."""
    components = document.components
    _describe_schemas(components)
    components.headers = {**(components.headers or {}), **_HEADERS}
    for path_item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(path_item, method, None)
            if operation is None or not operation.responses:
                continue
            automatic = operation.responses.get("400")
            if isinstance(automatic, OpenAPIResponse) and _PROBLEM_MEDIA_TYPE not in (automatic.content or {}):
                del operation.responses["400"]
            for status, response in operation.responses.items():
                if isinstance(response, OpenAPIResponse):
                    response.headers = _headers_of(response, status)
    return document
