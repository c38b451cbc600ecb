"""`/v1/channels`: webhooks that tell an application what changed, signed (Standard Webhooks) and
delivered at least once, with their delivery log, manual retry and replay.

The signing secret is shown once, when the channel is created or its secret rotated. An application
sees only its own channels: another application's id is simply not found.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body as BodyParam
from litestar.params import FromPath, PathParameter, QueryParameter

from calbroker.api.auth import Caller
from calbroker.api.problems import problem_response, problem_responses
from calbroker.api.wire import EMAIL_ITEMS, Body, Email, Response, aware, doc, instant_field
from calbroker.domain.channels import ChannelFilter, ChannelState, NoticeType, webhook_id
from calbroker.domain.connections import normalize_email
from calbroker.domain.errors import InvalidRequest
from calbroker.services import Services
from calbroker.store.channels import Channel, delete_channel, get_channel, list_channels
from calbroker.store.outbox import AttemptRecord, Message, MessageState, attempts_of, list_messages

__all__ = [
    "create_channel",
    "enable_channel",
    "get_channel_by_id",
    "list_application_channels",
    "list_deliveries",
    "remove_channel",
    "replay_channel",
    "retry_delivery",
    "rotate_channel_secret",
]

MAX_DELIVERIES_PAGE = 200
DELIVERY_ID_PATTERN = r"^msg_[0-9a-f]{32}$"
NoticeName = Literal[
    "mailbox.changed",
    "event.changed",
    "event.deleted",
    "connection.expiring",
    "connection.degraded",
    "connection.disconnected",
    "channel.verification",
]
DeliveryState = Literal["pending", "sending", "delivered", "failed"]

DeliveryId = Annotated[
    str,
    PathParameter(
        pattern=DELIVERY_ID_PATTERN,
        description="The delivery's id: the `webhook-id` its requests carried",
        examples=[Example(value="msg_5f0c1b8e2d3a4c6b9e7f0a1b2c3d4e5f")],
    ),
]


class ChannelIn(Body):
    """Where to deliver, and what about (every type, mailbox and connection when not narrowed)."""

    callback_url: Annotated[
        str,
        msgspec.Meta(
            max_length=2000,
            description="Your receiver: an https URL on a public address (the operator may allow private hosts)",
            examples=["https://hooks.example.com/calbroker"],
        ),
    ]
    types: Annotated[
        list[NoticeName],
        msgspec.Meta(description="The notice types to deliver; empty or absent: all of them", max_length=10),
    ] = msgspec.field(default_factory=list)
    mailboxes: Annotated[
        list[Email],
        msgspec.Meta(
            description="Only notices about these mailboxes (mailbox.changed, event.*); empty: every mailbox",
            max_length=1000,
            extra_json_schema=EMAIL_ITEMS,
        ),
    ] = msgspec.field(default_factory=list)
    connection_ids: Annotated[
        list[uuid.UUID],
        msgspec.Meta(description="Only notices about these connections; empty: every connection", max_length=1000),
    ] = msgspec.field(default_factory=list)
    only_managed: Annotated[
        bool,
        msgspec.Meta(description="mailbox.changed only when the change touches an event your application booked"),
    ] = False

    def to_domain(self) -> ChannelFilter:
        return ChannelFilter(
            types=frozenset(NoticeType(t) for t in self.types),
            mailboxes=frozenset(normalize_email(m, field_name=f"mailboxes[{i}]") for i, m in enumerate(self.mailboxes)),
            connection_ids=frozenset(self.connection_ids),
            only_managed=self.only_managed,
        )


class ChannelOut(Response):
    """A channel and how its deliveries fare."""

    id: Annotated[uuid.UUID, doc("The channel")]
    callback_url: Annotated[str, doc("Where deliveries go")]
    types: Annotated[list[NoticeName], doc("The notice types it takes")]
    mailboxes: Annotated[list[str], doc("Only these mailboxes (empty: every one)")]
    connection_ids: Annotated[list[uuid.UUID], doc("Only these connections (empty: every one)")]
    only_managed: Annotated[bool, doc("mailbox.changed only for changes touching events you booked")]
    state: Annotated[ChannelState, doc("active, or disabled (nothing is attempted; `disabled_reason` says why)")]
    signature: Annotated[str, doc("How deliveries are signed: standard-webhooks")]
    created_at: Annotated[datetime, doc("When it was created")]
    disabled_reason: Annotated[str | None, doc("Why it was disabled")] = None
    disabled_at: Annotated[datetime | None, doc("When it was disabled")] = None
    failing_since: Annotated[datetime | None, doc("First failed attempt since the last delivered one")] = None
    last_delivered_at: Annotated[datetime | None, doc("When a delivery last succeeded")] = None

    @classmethod
    def from_domain(cls, channel: Channel) -> ChannelOut:
        return cls(
            id=channel.id,
            callback_url=channel.callback_url,
            types=sorted(t.value for t in channel.filter.effective_types),
            mailboxes=sorted(channel.filter.mailboxes),
            connection_ids=sorted(channel.filter.connection_ids),
            only_managed=channel.filter.only_managed,
            state=channel.state,
            signature="standard-webhooks" if channel.flavour == "standard" else channel.flavour,
            created_at=channel.created_at,
            disabled_reason=channel.disabled_reason,
            disabled_at=channel.disabled_at,
            failing_since=channel.failing_since,
            last_delivered_at=channel.last_delivered_at,
        )


class ChannelCreated(ChannelOut, kw_only=True):
    """The new channel with its signing secret: shown now and never again."""

    secret: Annotated[
        str, doc("The Standard Webhooks signing secret (whsec_…); verify deliveries with it, store it now")
    ]


class ChannelList(Response):
    """Every channel of your application."""

    channels: Annotated[list[ChannelOut], doc("Your channels, oldest first")]


class RotatedOut(Response):
    """The new signing secret; the previous one keeps signing (a second signature) until it retires."""

    secret: Annotated[str, doc("The new signing secret (whsec_…): shown now and never again")]
    previous_retires_at: Annotated[datetime, doc("Until when deliveries also carry the previous secret's signature")]


class AttemptOut(Response):
    """One HTTP attempt of a delivery."""

    number: Annotated[int, doc("1 for the first attempt")]
    started_at: Annotated[datetime, doc("When it was made")]
    latency_ms: Annotated[int, doc("Time to the answer, or to the failure")]
    outcome: Annotated[
        Literal["delivered", "retry", "failed", "gone"],
        doc("delivered; retry (failed, tried again later); failed (the last try); gone (410: channel disabled)"),
    ]
    status_code: Annotated[int | None, doc("Your receiver's HTTP status, if it answered")] = None
    error_class: Annotated[
        str | None, doc("Why it failed: timeout, connection, tls, address_policy, redirect, http_status")
    ] = None
    response_excerpt: Annotated[str | None, doc("The first KB of your receiver's answer")] = None

    @classmethod
    def from_domain(cls, attempt: AttemptRecord) -> AttemptOut:
        return cls(
            number=attempt.number,
            started_at=attempt.started_at,
            latency_ms=attempt.latency_ms,
            outcome=attempt.outcome,  # type: ignore[arg-type]
            status_code=attempt.status_code,
            error_class=attempt.error_class,
            response_excerpt=attempt.response_excerpt or None,
        )


class DeliveryOut(Response):
    """One logical delivery (its id is the `webhook-id` every attempt carried) and its attempts."""

    id: Annotated[str, doc("The webhook-id")]
    type: Annotated[NoticeName, doc("The notice type")]
    state: Annotated[DeliveryState, doc("pending, sending (an attempt is in flight), delivered or failed")]
    data: Annotated[dict[str, object], doc("The payload's `data` (authorize links are only in the signed body)")]
    occurred_at: Annotated[datetime, doc("The payload's `timestamp`")]
    created_at: Annotated[datetime, doc("When it was queued")]
    attempts: Annotated[list[AttemptOut], doc("Every attempt, oldest first")]
    next_attempt_at: Annotated[datetime | None, doc("When a pending delivery is next attempted")] = None
    finished_at: Annotated[datetime | None, doc("When it was delivered or given up")] = None

    @classmethod
    def from_domain(cls, message: Message, attempts: list[AttemptRecord]) -> DeliveryOut:
        return cls(
            id=webhook_id(message.id),
            type=message.type.value,
            state=message.state.value,
            data=message.data,
            occurred_at=message.occurred_at,
            created_at=message.created_at,
            attempts=[AttemptOut.from_domain(a) for a in attempts],
            next_attempt_at=message.next_attempt_at if message.state is MessageState.PENDING else None,
            finished_at=message.finished_at,
        )


class DeliveryPage(Response):
    """A page of the delivery log."""

    deliveries: Annotated[list[DeliveryOut], doc("Newest first")]
    next_cursor: Annotated[str | None, doc("Pass as `cursor` for older deliveries; absent on the last page")] = None


class ReplayIn(Body):
    """Which deliveries to send again: every finished one created since an instant."""

    since: Annotated[str, instant_field("Deliver again every finished delivery created since this instant")]


class ReplayOut(Response):
    """How many deliveries were queued again."""

    replayed: Annotated[int, doc("How many deliveries were queued again (same webhook-ids, in their order)")]


_NOT_FOUND = problem_response(
    "No channel (or delivery) with this id belongs to your application (`/problems/not-found`)",
    ("not-found", "no channel 6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c"),
)
_CHANNEL_INVALID = problem_response(
    "Invalid input: a callback URL the policy refuses, an unknown connection, or a limit exceeded "
    "(`/problems/invalid-request`, `/problems/limit-exceeded`)",
    (
        "invalid-request",
        "callback_url: http://10.0.0.5/hook resolves to a private, local or reserved address (10.0.0.5); "
        "use a public address",
        [{"field": "callback_url", "message": "resolves to a private, local or reserved address"}],
    ),
    ("limit-exceeded", "an application may have at most 25 channels; delete one first"),
)
_IN_FLIGHT = problem_response(
    "An attempt of this delivery is in flight (`/problems/conflict`)",
    ("conflict", "An attempt of this delivery is in flight; look again in a few seconds."),
)
_EXAMPLE = {
    "callback_url": "https://hooks.example.com/calbroker",
    "types": ["event.changed", "event.deleted", "connection.disconnected"],
    "only_managed": True,
}


def _message_id(raw: str) -> uuid.UUID:
    if not raw.startswith("msg_") or len(raw) != 36:
        raise InvalidRequest.field("delivery_id", "is the webhook-id of a delivery, msg_ and 32 hex digits")
    try:
        return uuid.UUID(hex=raw[4:])
    except ValueError:
        raise InvalidRequest.field("delivery_id", "is the webhook-id of a delivery, msg_ and 32 hex digits") from None


@post(
    "/channels",
    operation_id="createChannel",
    status_code=201,
    tags=["channels"],
    summary="Create a channel (its signing secret is shown once; a channel.verification delivery follows)",
    responses=problem_responses(body=True, s422=_CHANNEL_INVALID),
)
async def create_channel(
    data: Annotated[ChannelIn, BodyParam(examples=[Example(summary="Booked events only", value=_EXAMPLE)])],
    caller: NamedDependency[Caller],
    services: NamedDependency[Services],
) -> ChannelCreated:
    """Deliveries are signed with Standard Webhooks: verify them with the `standardwebhooks` package and
    the secret returned here."""
    created = await services.channels.registry.create(caller.application.id, data.callback_url, data.to_domain())
    out = ChannelOut.from_domain(created.channel)
    return ChannelCreated(**{f: getattr(out, f) for f in out.__struct_fields__}, secret=created.secret)


@get(
    "/channels",
    operation_id="listChannels",
    tags=["channels"],
    summary="Your channels",
    responses=problem_responses(),
)
async def list_application_channels(
    caller: NamedDependency[Caller], services: NamedDependency[Services]
) -> ChannelList:
    async with services.pool.acquire() as conn:
        channels = await list_channels(conn, caller.application.id)
    return ChannelList(channels=[ChannelOut.from_domain(c) for c in channels])


@get(
    "/channels/{channel_id:uuid}",
    operation_id="getChannel",
    tags=["channels"],
    summary="A channel and how its deliveries fare",
    responses=problem_responses(s404=_NOT_FOUND),
)
async def get_channel_by_id(
    channel_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], services: NamedDependency[Services]
) -> ChannelOut:
    async with services.pool.acquire() as conn:
        return ChannelOut.from_domain(await get_channel(conn, caller.application.id, channel_id))


@delete(
    "/channels/{channel_id:uuid}",
    operation_id="deleteChannel",
    status_code=204,
    tags=["channels"],
    summary="Delete a channel, its secrets and its delivery log",
    responses=problem_responses(s404=_NOT_FOUND),
)
async def remove_channel(
    channel_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], services: NamedDependency[Services]
) -> None:
    async with services.pool.acquire() as conn, conn.transaction():
        await delete_channel(conn, caller.application.id, channel_id, actor="api")


@post(
    "/channels/{channel_id:uuid}/rotate_secret",
    operation_id="rotateChannelSecret",
    status_code=200,
    tags=["channels"],
    summary="Issue a new signing secret; the previous one keeps signing for an overlap window",
    responses=problem_responses(s404=_NOT_FOUND),
)
async def rotate_channel_secret(
    channel_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], services: NamedDependency[Services]
) -> RotatedOut:
    """Until `previous_retires_at` deliveries carry two signatures (`v1,… v1,…`), so receivers can
    switch to the new secret without dropping one."""
    rotated = await services.channels.registry.rotate_secret(caller.application.id, channel_id)
    return RotatedOut(secret=rotated.secret, previous_retires_at=rotated.previous_retires_at)


@post(
    "/channels/{channel_id:uuid}/enable",
    operation_id="enableChannel",
    status_code=200,
    tags=["channels"],
    summary="Re-enable a disabled channel (what waited is attempted at once)",
    responses=problem_responses(s404=_NOT_FOUND),
)
async def enable_channel(
    channel_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], services: NamedDependency[Services]
) -> ChannelOut:
    return ChannelOut.from_domain(await services.channels.registry.enable(caller.application.id, channel_id))


@get(
    "/channels/{channel_id:uuid}/deliveries",
    operation_id="listChannelDeliveries",
    tags=["channels"],
    summary="The channel's deliveries and every attempt, newest first",
    responses=problem_responses(params=True, s404=_NOT_FOUND),
)
async def list_deliveries(
    *,
    channel_id: FromPath[uuid.UUID],
    caller: NamedDependency[Caller],
    services: NamedDependency[Services],
    in_state: Annotated[
        DeliveryState | None, QueryParameter(name="state", description="Only deliveries in this state")
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_DELIVERIES_PAGE, description="Page size")] = 50,
    cursor: Annotated[
        str | None, QueryParameter(pattern=r"^[0-9]{1,19}$", description="`next_cursor` of the previous page")
    ] = None,
) -> DeliveryPage:
    async with services.pool.acquire() as conn:
        await get_channel(conn, caller.application.id, channel_id)
        messages = await list_messages(
            conn,
            channel_id,
            states=[MessageState(in_state)] if in_state else [],
            before_seq=int(cursor) if cursor else None,
            limit=limit + 1,
        )
        page = messages[:limit]
        attempts = await attempts_of(conn, [m.id for m in page])
    return DeliveryPage(
        deliveries=[DeliveryOut.from_domain(m, attempts.get(m.id, [])) for m in page],
        next_cursor=str(page[-1].seq) if len(messages) > limit else None,
    )


@post(
    "/channels/{channel_id:uuid}/deliveries/{delivery_id:str}/retry",
    operation_id="retryChannelDelivery",
    status_code=202,
    tags=["channels"],
    summary="Attempt a delivery once more, now (same webhook-id)",
    responses=problem_responses(params=True, s404=_NOT_FOUND, s409=_IN_FLIGHT),
)
async def retry_delivery(
    channel_id: FromPath[uuid.UUID],
    delivery_id: DeliveryId,
    caller: NamedDependency[Caller],
    services: NamedDependency[Services],
) -> DeliveryOut:
    message = await services.channels.registry.retry(caller.application.id, channel_id, _message_id(delivery_id))
    async with services.pool.acquire() as conn:
        attempts = await attempts_of(conn, [message.id])
    return DeliveryOut.from_domain(message, attempts.get(message.id, []))


@post(
    "/channels/{channel_id:uuid}/replay",
    operation_id="replayChannel",
    status_code=202,
    tags=["channels"],
    summary="Deliver again everything finished since an instant (kept 30 days), in order",
    responses=problem_responses(body=True, s404=_NOT_FOUND),
)
async def replay_channel(
    channel_id: FromPath[uuid.UUID],
    data: Annotated[
        ReplayIn,
        BodyParam(examples=[Example(summary="The last day again", value={"since": "2026-11-24T09:00:00Z"})]),
    ],
    caller: NamedDependency[Caller],
    services: NamedDependency[Services],
) -> ReplayOut:
    since = aware(data.since, "since")
    count = await services.channels.registry.replay(caller.application.id, channel_id, since)
    return ReplayOut(replayed=count)
