"""The Cronofy flavours as pure functions: the body Cronofy's SDKs expect and a signature they accept."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pycronofy
import pytest

from calbroker.domain.channels import NoticeType
from calbroker.domain.errors import Conflict
from calbroker.services.channels import FLAVOURS
from calbroker.store.outbox import Message, MessageState

NOW = datetime(2026, 3, 2, 9, 0, 0, 750_000, tzinfo=UTC)


def _message(kind: NoticeType, **data: object) -> Message:
    return Message(
        id=uuid.uuid4(),
        seq=1,
        channel_id=uuid.UUID(int=7),
        type=kind,
        data=dict(data),
        occurred_at=NOW,
        order_key="k",
        state=MessageState.PENDING,
        attempts=0,
        scheduled=0,
        allowed=8,
        next_attempt_at=NOW,
        created_at=NOW,
    )


def _accepts(secret: str, header: str, body: bytes) -> bool:
    return bool(pycronofy.Client(client_id="cbi_x", client_secret=secret).hmac_valid(header, body.decode()))


def test_a_change_carries_changes_since_floored_to_the_second_and_verifies_under_each_secret() -> None:
    message = _message(NoticeType.MAILBOX_CHANGED, changes_since="2026-03-02T10:00:00.750000+01:00")
    out = FLAVOURS["cronofy"].render(message, {}, ["cbs_new", "cbs_old"], NOW)
    assert json.loads(out.body) == {
        "notification": {"type": "change", "changes_since": "2026-03-02T09:00:00Z"},
        "channel": {"channel_id": "chn_" + uuid.UUID(int=7).hex},
    }
    header = out.headers["cronofy-hmac-sha256"]
    assert len(header.split(",")) == 2
    assert _accepts("cbs_new", header, out.body)
    assert _accepts("cbs_old", header, out.body)
    assert not _accepts("cbs_other", header, out.body)
    assert out.headers["content-type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("kind", "cronofy"),
    [(NoticeType.CHANNEL_VERIFICATION, "verification"), (NoticeType.CONNECTION_DISCONNECTED, "profile_disconnected")],
)
def test_other_types_in_cronofy_words(kind: NoticeType, cronofy: str) -> None:
    out = FLAVOURS["cronofy"].render(_message(kind), {"authorize_url": "https://secret"}, ["cbs_s"], NOW)
    assert json.loads(out.body)["notification"] == {"type": cronofy}
    assert b"secret" not in out.body  # sealed data (an authorize link) is not Cronofy's to carry


def test_a_callback_carries_the_sealed_authorization_and_cronofy_secrets_do_not_rotate_per_channel() -> None:
    authorization = {"code": "cbc_code", "state": "s"}
    out = FLAVOURS["cronofy_callback"].render(
        _message(NoticeType.CHANNEL_VERIFICATION), {"authorization": authorization}, ["cbs_s"], NOW
    )
    assert json.loads(out.body) == {"authorization": authorization}
    assert _accepts("cbs_s", out.headers["cronofy-hmac-sha256"], out.body)
    for name in ("cronofy", "cronofy_callback"):
        with pytest.raises(Conflict, match="client secret"):
            FLAVOURS[name].secret()
