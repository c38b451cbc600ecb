"""The freshness rule (when the synced copy may answer) and the busy block's value semantics."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calbroker.domain import BusyBlock, BusyStatus, Interval
from calbroker.domain.errors import InvalidRequest
from calbroker.domain.sync import FeedState, StaleReason, SyncHealth, SyncState, stale_reason

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
MAX_AGE = timedelta(minutes=15)
POLLING_AGE = timedelta(minutes=10)
WINDOW = Interval(NOW - timedelta(days=1), NOW + timedelta(days=180))
WANTED = Interval(NOW + timedelta(days=1), NOW + timedelta(days=8))

FRESH = SyncHealth(
    state=SyncState.ACTIVE,
    feed=FeedState.ACTIVE,
    feed_expires_at=NOW + timedelta(days=2),
    lifecycle_pending=False,
    window=WINDOW,
    synced_at=NOW - timedelta(minutes=5),
    last_notified_at=NOW - timedelta(minutes=6),
)


def judge(health: SyncHealth, wanted: Interval = WANTED) -> StaleReason | None:
    return stale_reason(health, wanted, now=NOW, max_age=MAX_AGE, polling_age=POLLING_AGE)


def test_a_healthy_recent_copy_answers() -> None:
    assert judge(FRESH) is None
    assert judge(dataclasses.replace(FRESH, last_notified_at=None)) is None
    assert judge(FRESH, WINDOW) is None  # the whole synced window, edges included


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"state": SyncState.PENDING}, StaleReason.NOT_SYNCED),
        ({"synced_at": None}, StaleReason.NOT_SYNCED),
        ({"window": None}, StaleReason.NOT_SYNCED),
        ({"state": SyncState.FAILED}, StaleReason.SYNC_FAILED),
        ({"state": SyncState.UNSUPPORTED}, StaleReason.SYNC_FAILED),
        ({"feed": FeedState.NONE}, StaleReason.NO_FEED),
        ({"feed": FeedState.FAILED}, StaleReason.NO_FEED),
        ({"feed": FeedState.UNSUPPORTED}, StaleReason.NO_FEED),
        ({"feed_expires_at": None}, StaleReason.FEED_EXPIRED),
        ({"feed_expires_at": NOW}, StaleReason.FEED_EXPIRED),
        ({"lifecycle_pending": True}, StaleReason.LIFECYCLE_PENDING),
        # A notification after the last round started: the copy may miss that change.
        ({"last_notified_at": NOW - timedelta(minutes=4)}, StaleReason.CHANGE_PENDING),
        ({"synced_at": NOW - MAX_AGE - timedelta(seconds=1), "last_notified_at": None}, StaleReason.TOO_OLD),
        ({"window": Interval(WANTED.start + timedelta(hours=1), WINDOW.end)}, StaleReason.OUTSIDE_WINDOW),
        ({"window": Interval(WINDOW.start, WANTED.end - timedelta(hours=1))}, StaleReason.OUTSIDE_WINDOW),
    ],
)
def test_every_doubt_reads_live(change: dict[str, object], reason: StaleReason) -> None:
    assert judge(dataclasses.replace(FRESH, **change)) is reason  # type: ignore[arg-type]


def test_polling_tightens_the_age_limit() -> None:
    polled = dataclasses.replace(
        FRESH, feed=FeedState.POLLING, synced_at=NOW - timedelta(minutes=12), last_notified_at=None
    )
    assert judge(polled) is StaleReason.TOO_OLD
    assert judge(dataclasses.replace(polled, feed=FeedState.ACTIVE)) is None
    assert judge(dataclasses.replace(polled, synced_at=NOW - timedelta(minutes=9))) is None


_MINUTES = st.integers(min_value=-30, max_value=30).map(lambda m: timedelta(minutes=m))


@given(
    state=st.sampled_from(SyncState),
    feed=st.sampled_from(FeedState),
    expires=st.none() | _MINUTES,
    pending=st.booleans(),
    synced=st.none() | _MINUTES,
    notified=st.none() | _MINUTES,
)
def test_the_copy_answers_only_when_every_condition_holds(
    state: SyncState,
    feed: FeedState,
    expires: timedelta | None,
    pending: bool,
    synced: timedelta | None,
    notified: timedelta | None,
) -> None:
    health = SyncHealth(
        state=state,
        feed=feed,
        feed_expires_at=None if expires is None else NOW + expires,
        lifecycle_pending=pending,
        window=WINDOW,
        synced_at=None if synced is None else NOW + synced,
        last_notified_at=None if notified is None else NOW + notified,
    )
    limit = min(MAX_AGE, POLLING_AGE) if feed is FeedState.POLLING else MAX_AGE
    provable = (
        state is SyncState.ACTIVE
        and feed in (FeedState.ACTIVE, FeedState.POLLING)
        and health.feed_expires_at is not None
        and health.feed_expires_at > NOW
        and not pending
        and health.synced_at is not None
        and NOW - health.synced_at <= limit
        and (health.last_notified_at is None or health.last_notified_at <= health.synced_at)
    )
    assert (judge(health) is None) is provable


def test_busy_blocks_are_values_ordered_by_start_then_end_then_status() -> None:
    morning = Interval(NOW, NOW + timedelta(hours=1))
    block = BusyBlock(morning, BusyStatus.BUSY)
    assert block == BusyBlock.at(morning.start_us, morning.end_us, BusyStatus.BUSY)
    assert hash(block) == hash(BusyBlock(morning, BusyStatus.BUSY))
    assert (block.interval, block.status) == (morning, BusyStatus.BUSY)
    assert (block.start_us, block.end_us) == (morning.start_us, morning.end_us)
    later = BusyBlock(Interval(NOW + timedelta(minutes=1), NOW + timedelta(hours=1)), BusyStatus.FREE)
    longer = BusyBlock(Interval(NOW, NOW + timedelta(hours=2)), BusyStatus.BUSY)
    assert sorted([later, longer, block]) == [block, longer, later]
    start, end, status = block
    assert (start, end, status) == (morning.start_us, morning.end_us, BusyStatus.BUSY)
    assert "BusyBlock(interval=" in repr(block)


def test_a_busy_block_needs_time() -> None:
    with pytest.raises(InvalidRequest):
        BusyBlock.at(10, 10, BusyStatus.BUSY)
