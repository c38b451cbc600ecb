"""How a delivery looks on the wire: its body and the headers that sign it, per channel flavour.

The outbox and the worker know nothing of payload shapes or signatures; a flavour does. `standard`
is Standard Webhooks (https://www.standardwebhooks.com): a `{type, timestamp, data}` body and the
`webhook-id`, `webhook-timestamp` and `webhook-signature` headers, one `v1,<base64 HMAC-SHA256>`
per signing secret (two while a rotation overlaps), signed by the `standardwebhooks` package that
receivers verify with. Another scheme (another body, another header) is another `Flavour`: `cronofy`
is Cronofy's push notifications (docs/cronofy.md), for channels made through the compat API, and
`cronofy_callback` its service-account authorization callbacks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from secrets import token_bytes
from typing import Any, Protocol

import msgspec
from standardwebhooks import Webhook

from calbroker.domain.channels import NoticeType, webhook_id
from calbroker.domain.errors import Conflict
from calbroker.store.outbox import Message

__all__ = [
    "CRONOFY_CHANNEL_PREFIX",
    "FLAVOURS",
    "CronofyCallback",
    "CronofyPush",
    "Flavour",
    "Outgoing",
    "StandardWebhooks",
    "new_secret",
]


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


CRONOFY_CHANNEL_PREFIX = "chn_"

_CRONOFY_TYPES = {
    NoticeType.CHANNEL_VERIFICATION: "verification",
    NoticeType.MAILBOX_CHANGED: "change",
    NoticeType.CONNECTION_DISCONNECTED: "profile_disconnected",
}


def _cronofy_time(raw: object) -> str:
    """Cronofy's `…Z` form, floored to the second: reading from a slightly earlier instant only finds more."""
    moment = datetime.fromisoformat(str(raw)).astimezone(UTC).replace(microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class CronofyPush:
    """Cronofy's push notifications (https://docs.cronofy.com/developers/api/push-notifications/):
    `{"notification": {"type", …}, "channel": {"channel_id"}}`, signed in `Cronofy-HMAC-SHA256` with
    the base64 HMAC-SHA256 of the body under the application's client secret, one per secret (comma
    separated) while a rotation overlaps — what `pycronofy.Client.hmac_valid` checks."""

    name = "cronofy"

    def secret(self) -> str:
        raise Conflict(
            "Cronofy channels are signed with the application's Cronofy client secret: rotate it with "
            "`calbroker apps cronofy-credentials`, and every Cronofy channel signs with both for the overlap."
        )

    def render(self, message: Message, sealed: Mapping[str, Any], secrets: Sequence[str], at: datetime) -> Outgoing:
        notification: dict[str, Any] = {"type": _CRONOFY_TYPES.get(message.type, message.type.value)}
        if message.type is NoticeType.MAILBOX_CHANGED:
            notification["changes_since"] = _cronofy_time(message.data["changes_since"])
        channel_id = CRONOFY_CHANNEL_PREFIX + message.channel_id.hex
        return _cronofy_signed({"notification": notification, "channel": {"channel_id": channel_id}}, secrets)


def _cronofy_signed(payload: Mapping[str, Any], secrets: Sequence[str]) -> Outgoing:
    body = _encode(payload)
    signatures = ",".join(
        base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode() for secret in secrets
    )
    return Outgoing(body, {"content-type": "application/json; charset=utf-8", "cronofy-hmac-sha256": signatures})


class CronofyCallback(CronofyPush):
    """Enterprise Connect's callback to a service-account authorization's `callback_url`:
    `{"authorization": {"code", "state"}}` or `{"authorization": {"error", "error_description", "state"}}`
    (the code is sealed at rest), signed like push notifications."""

    name = "cronofy_callback"

    def render(self, message: Message, sealed: Mapping[str, Any], secrets: Sequence[str], at: datetime) -> Outgoing:
        return _cronofy_signed({"authorization": sealed.get("authorization", {})}, secrets)


FLAVOURS: Mapping[str, Flavour] = {
    StandardWebhooks.name: StandardWebhooks(),
    CronofyPush.name: CronofyPush(),
    CronofyCallback.name: CronofyCallback(),
}
