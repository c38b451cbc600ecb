"""Pure scheduling rules: intervals, busy status, working hours and the availability engine.

No I/O and no clock: callers pass ``now`` and upstream data in, and get plain values back.
Errors live in ``calbroker.domain.errors``.
"""

from calbroker.domain.availability import (
    DEFAULT_MAX_RESULTS,
    MAX_GROUPS,
    MAX_MEMBERS,
    MAX_QUERY_PERIODS,
    MAX_QUERY_SPAN,
    MAX_RESULTS,
    AvailabilityQuery,
    AvailabilityResult,
    ResponseFormat,
    Slot,
    find_availability,
)
from calbroker.domain.busy import BusyBlock, BusyStatus, blocking
from calbroker.domain.explanations import Blocker, BlockReason, Explanation
from calbroker.domain.intervals import (
    Interval,
    contains,
    dilate,
    intersect,
    normalize,
    overlapping,
    subtract,
    union,
)
from calbroker.domain.participants import Group, Member
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours, expand

__all__ = [
    "DEFAULT_MAX_RESULTS",
    "MAX_GROUPS",
    "MAX_MEMBERS",
    "MAX_QUERY_PERIODS",
    "MAX_QUERY_SPAN",
    "MAX_RESULTS",
    "AvailabilityQuery",
    "AvailabilityResult",
    "BlockReason",
    "Blocker",
    "BusyBlock",
    "BusyStatus",
    "Explanation",
    "Group",
    "Interval",
    "Member",
    "ResponseFormat",
    "Slot",
    "Weekday",
    "WeeklyPeriod",
    "WorkingHours",
    "blocking",
    "contains",
    "dilate",
    "expand",
    "find_availability",
    "intersect",
    "normalize",
    "overlapping",
    "subtract",
    "union",
]
