"""FindItem and FindFolder restrictions the sandbox evaluates: comparisons on extended properties and
a few item or folder fields.

- Restriction: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/restriction
- IsEqualTo / IsNotEqualTo: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/isequalto
- Exists: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/exists
- And / Or / Not: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/and-searchexpressiontype

Exchange evaluates any restriction on the server; clients such as calbroker rely on that to find an
item by a custom property (a marker) without listing the whole folder:
https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/how-to-get-custom-extended-properties-by-using-ews-in-exchange

FindFolder takes restrictions on folder properties ("Restrictions are permitted and should use only
the folder properties", https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/findfolder-operation);
clients list calendars with ``IsEqualTo folder:FolderClass = IPF.Appointment``, often with
``folder:DisplayName`` too.

Only what is listed above is modelled. `compile_restriction` / `compile_search` return None for
anything else, and the caller then does not filter at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from calbroker.sandbox.events import Event
from calbroker.sandbox.ews.items import extended_key
from calbroker.sandbox.ews.soap import Element, MalformedRequest, local_name, t

__all__ = ["SearchFields", "compile_restriction", "compile_search"]

T = TypeVar("T")
Predicate = Callable[[T], bool]

_ITEM_FIELDS: dict[str, Callable[[Event], str | None]] = {
    "item:Subject": lambda e: e.subject,
    "calendar:Location": lambda e: e.location,
    "calendar:UID": lambda e: e.ical_uid,
    "calendar:Organizer": lambda e: e.organizer_email,
}


class _Unsupported(Exception):
    """A search expression the sandbox does not model."""


class SearchFields(Generic[T]):
    """How a restriction reads one kind of object: field URIs and, optionally, extended properties."""

    def __init__(
        self,
        fields: Mapping[str, Callable[[T], str | None]],
        extended: Callable[[T, str], str | None] | None = None,
    ) -> None:
        self.fields = fields
        self.extended = extended

    def path(self, expr: Element) -> Element:
        path = next((c for c in expr if local_name(c.tag) in ("ExtendedFieldURI", "FieldURI")), None)
        if path is None:
            raise _Unsupported(local_name(expr.tag))
        if local_name(path.tag) == "ExtendedFieldURI":
            if self.extended is None:
                raise _Unsupported("ExtendedFieldURI")
        elif (path.get("FieldURI") or "") not in self.fields:
            raise _Unsupported(path.get("FieldURI"))
        return path

    def value(self, subject: T, path: Element) -> str | None:
        if local_name(path.tag) == "ExtendedFieldURI":
            assert self.extended is not None
            return self.extended(subject, extended_key(path))
        return self.fields[path.get("FieldURI") or ""](subject)


_ITEMS: SearchFields[Event] = SearchFields(_ITEM_FIELDS, lambda e, key: e.extended_properties.get(key))


def _constant(expr: Element) -> str:
    constant = expr.find(f"{t('FieldURIOrConstant')}/{t('Constant')}")
    if constant is None:
        raise _Unsupported("FieldURIOrConstant without a Constant")
    return constant.get("Value") or ""


def _contains(expr: Element) -> Callable[[str], bool]:
    """Contains: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/contains"""
    constant = expr.find(t("Constant"))
    if constant is None:
        raise MalformedRequest("Contains needs a Constant")
    wanted = constant.get("Value") or ""
    mode = expr.get("ContainmentMode") or "Substring"
    loose = (expr.get("ContainmentComparison") or "Exact") != "Exact"

    def test(value: str) -> bool:
        have, need = (value.lower(), wanted.lower()) if loose else (value, wanted)
        match mode:
            case "FullString":
                return have == need
            case "Prefixed" | "PrefixOnWords":
                return have.startswith(need)
            case _:
                return need in have

    return test


def _compile(expr: Element, fields: SearchFields[T]) -> Predicate[T]:
    kind = local_name(expr.tag)
    match kind:
        case "And" | "Or":
            parts = [_compile(c, fields) for c in expr]
            if not parts:
                raise MalformedRequest(f"{kind} needs at least one search expression")
            combine = all if kind == "And" else any
            return lambda e: combine(p(e) for p in parts)
        case "Not":
            if len(expr) != 1:
                raise MalformedRequest("Not takes exactly one search expression")
            inner = _compile(expr[0], fields)
            return lambda e: not inner(e)
        case "Exists":
            path = fields.path(expr)
            return lambda e: fields.value(e, path) is not None
        case "IsEqualTo" | "IsNotEqualTo":
            path = fields.path(expr)
            wanted = _constant(expr)
            equal = kind == "IsEqualTo"
            return lambda e: (fields.value(e, path) == wanted) is equal
        case "Contains":
            path = fields.path(expr)
            test = _contains(expr)
            return lambda e: test(fields.value(e, path) or "")
        case _:
            raise _Unsupported(kind)


def compile_search(restriction: Element | None, fields: SearchFields[T]) -> Predicate[T] | None:
    """An `<m:Restriction>` as a predicate on what `fields` reads; None when absent or not modelled."""
    if restriction is None or len(restriction) == 0:
        return None
    if len(restriction) != 1:
        raise MalformedRequest("Restriction takes exactly one search expression")
    try:
        return _compile(restriction[0], fields)
    except _Unsupported:
        return None


def compile_restriction(restriction: Element | None) -> Predicate[Event] | None:
    """The `<m:Restriction>` of a FindItem as a predicate on store events; None when absent or not modelled."""
    return compile_search(restriction, _ITEMS)
