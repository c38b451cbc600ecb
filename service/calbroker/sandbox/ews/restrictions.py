"""FindItem restrictions the sandbox evaluates: comparisons on extended properties and a few item fields.

- Restriction: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/restriction
- IsEqualTo / IsNotEqualTo: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/isequalto
- Exists: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/exists
- And / Or / Not: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/and-searchexpressiontype

Exchange evaluates any restriction on the server; clients such as calbroker rely on that to find an
item by a custom property (a marker) without listing the whole folder:
https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/how-to-get-custom-extended-properties-by-using-ews-in-exchange

Only what is listed above is modelled. `compile_restriction` returns None for anything else, and the
caller then does not filter at all.
"""

from __future__ import annotations

from collections.abc import Callable

from calbroker.sandbox.events import Event
from calbroker.sandbox.ews.items import extended_key
from calbroker.sandbox.ews.soap import Element, MalformedRequest, local_name, t

__all__ = ["compile_restriction"]

Predicate = Callable[[Event], bool]

_ITEM_FIELDS: dict[str, Callable[[Event], str | None]] = {
    "item:Subject": lambda e: e.subject,
    "calendar:Location": lambda e: e.location,
    "calendar:UID": lambda e: e.ical_uid,
    "calendar:Organizer": lambda e: e.organizer_email,
}


class _Unsupported(Exception):
    """A search expression the sandbox does not model."""


def _value(event: Event, path: Element) -> str | None:
    if local_name(path.tag) == "ExtendedFieldURI":
        return event.extended_properties.get(extended_key(path))
    getter = _ITEM_FIELDS.get(path.get("FieldURI") or "")
    if getter is None:
        raise _Unsupported(path.get("FieldURI"))
    return getter(event)


def _path_of(expr: Element) -> Element:
    path = next((c for c in expr if local_name(c.tag) in ("ExtendedFieldURI", "FieldURI")), None)
    if path is None:
        raise _Unsupported(local_name(expr.tag))
    if local_name(path.tag) == "FieldURI" and (path.get("FieldURI") or "") not in _ITEM_FIELDS:
        raise _Unsupported(path.get("FieldURI"))
    return path


def _constant(expr: Element) -> str:
    constant = expr.find(f"{t('FieldURIOrConstant')}/{t('Constant')}")
    if constant is None:
        raise _Unsupported("FieldURIOrConstant without a Constant")
    return constant.get("Value") or ""


def _compile(expr: Element) -> Predicate:
    kind = local_name(expr.tag)
    match kind:
        case "And" | "Or":
            parts = [_compile(c) for c in expr]
            if not parts:
                raise MalformedRequest(f"{kind} needs at least one search expression")
            combine = all if kind == "And" else any
            return lambda e: combine(p(e) for p in parts)
        case "Not":
            if len(expr) != 1:
                raise MalformedRequest("Not takes exactly one search expression")
            inner = _compile(expr[0])
            return lambda e: not inner(e)
        case "Exists":
            path = _path_of(expr)
            return lambda e: _value(e, path) is not None
        case "IsEqualTo" | "IsNotEqualTo":
            path = _path_of(expr)
            wanted = _constant(expr)
            equal = kind == "IsEqualTo"
            return lambda e: (_value(e, path) == wanted) is equal
        case _:
            raise _Unsupported(kind)


def compile_restriction(restriction: Element | None) -> Predicate | None:
    """The `<m:Restriction>` of a FindItem as a predicate on store events; None when absent or not modelled."""
    if restriction is None or len(restriction) == 0:
        return None
    if len(restriction) != 1:
        raise MalformedRequest("Restriction takes exactly one search expression")
    try:
        return _compile(restriction[0])
    except _Unsupported:
        return None
