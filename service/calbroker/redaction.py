"""Scrub secrets from anything about to be logged, audited or shown in an error.

Two nets, because one always has holes: values under sensitive key names are replaced wholesale,
and every string is scanned for things that look like credentials (our API keys, bearer and
basic auth, JWTs, PEM private keys, `secret=` pairs in query strings and forms).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

__all__ = ["REDACTED", "is_sensitive_key", "redact", "redact_text"]

REDACTED: Final = "[REDACTED]"

_SENSITIVE_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "client_assertion",
    "api_key",
    "apikey",
    "signature",
    "code_verifier",
)
_NOT_SENSITIVE = frozenset({"token_type", "token_source", "key_prefix", "token_endpoint", "expires_in"})

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bcbk_([a-z2-7]{8})_[A-Za-z0-9_-]{20,}"), r"cbk_\1_" + REDACTED),
    # Authorize-link tokens travel in URL paths (/connect/cbl_...), so request log lines carry them.
    (re.compile(r"\bcbl_[A-Za-z0-9_-]{20,}"), "cbl_" + REDACTED),
    # Cronofy-compatible client secrets, access and refresh tokens, authorization codes.
    (re.compile(r"\b(cb[stcr])_[A-Za-z0-9_-]{20,}"), r"\1_" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic|negotiate|ntlm)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL),
        REDACTED,
    ),
    (
        re.compile(
            r"(?i)\b(client_secret|password|passwd|secret|access_token|refresh_token|id_token|"
            r"client_assertion|code_verifier|api_key|token)=[^&\s\"']+"
        ),
        r"\1=" + REDACTED,
    ),
    (
        re.compile(r"(?i)(\"(?:client_secret|password|secret|access_token|refresh_token|token)\"\s*:\s*)\"[^\"]*\""),
        r'\1"' + REDACTED + '"',
    ),
)


def is_sensitive_key(key: str) -> bool:
    """True for names like `password`, `client_secret`, `Authorization`, `x-api-key`."""
    norm = key.lower().replace("-", "_")
    if norm in _NOT_SENSITIVE:
        return False
    return any(part in norm for part in _SENSITIVE_PARTS)


def redact_text(text: str) -> str:
    """Replace credential-looking substrings in free text."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: object, _depth: int = 0) -> object:
    """A copy of `value` (dicts, lists, tuples, strings) with secrets replaced."""
    if _depth > 20:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and is_sensitive_key(key) and item is not None
                else redact(item, _depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item, _depth + 1) for item in value]
    return value
