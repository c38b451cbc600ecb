"""How a delivery looks on the wire: its body and the headers that sign it, per channel flavour.

The outbox and the worker know nothing of payload shapes or signatures; a flavour does. `standard`
is Standard Webhooks (https://www.standardwebhooks.com): a `{type, timestamp, data}` body and the
`webhook-id`, `webhook-timestamp` and `webhook-signature` headers, one `v1,<base64 HMAC-SHA256>`
per signing secret (two while a rotation overlaps), signed by the `standardwebhooks` package that
receivers verify with. Another scheme (another body, another header) is another `Flavour`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from secrets import token_bytes
from typing import Any, Protocol

import msgspec
from standardwebhooks import Webhook

from calbroker.domain.channels import NoticeType, webhook_id
from calbroker.store.outbox import Message

__all__ = ["FLAVOURS", "Flavour", "Outgoing", "StandardWebhooks", "new_secret"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A delivery ready to send: the exact body bytes and the headers that go with them."""

    body: bytes
    headers: dict[str, str]


class Flavour(Protocol):
    """A payload shape and a signing scheme for one kind of channel."""

    name: str

    def secret(self) -> str:
        """A fresh signing secret in the form this scheme's receivers expect."""
        ...

    def render(self, message: Message, sealed: Mapping[str, Any], secrets: Sequence[str], at: datetime) -> Outgoing:
        """The body and signed headers of one attempt of `message` at `at` (UTC)."""
        ...


class _Envelope(msgspec.Struct):
    type: NoticeType
    timestamp: datetime
    data: dict[str, Any]


_encode = msgspec.json.Encoder().encode


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: the Standard Webhooks secret format (24–64 bytes)."""
    return "whsec_" + base64.b64encode(token_bytes(32)).decode()


class StandardWebhooks:
    """Standard Webhooks 1.0 (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md)."""

    name = "standard"

    def secret(self) -> str:
        return new_secret()

    def render(self, message: Message, sealed: Mapping[str, Any], secrets: Sequence[str], at: datetime) -> Outgoing:
        body = _encode(
            _Envelope(
                type=message.type,
                timestamp=message.occurred_at.astimezone(UTC),
                data={**message.data, **sealed},
            )
        )
        ident = webhook_id(message.id)
        # The package replaces a datetime's zone with UTC rather than converting it: always pass UTC.
        moment = at.astimezone(UTC)
        text = body.decode()  # a str: older releases of the package sign only str
        signatures = " ".join(Webhook(secret).sign(ident, moment, text) for secret in secrets)
        return Outgoing(
            body,
            {
                "content-type": "application/json",
                "webhook-id": ident,
                "webhook-timestamp": str(int(moment.timestamp())),
                "webhook-signature": signatures,
            },
        )


FLAVOURS: Mapping[str, Flavour] = {StandardWebhooks.name: StandardWebhooks()}
