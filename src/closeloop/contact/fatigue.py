"""Fatigue caps: how many messages a customer may receive, and when the next may go.

A cap counts messages already sent, per customer across every workflow (for
example at most 3 in 7 days) or per case. A message over a cap is deferred
until enough earlier messages leave the window, never dropped silently;
a per-case cap with no window ends that case's outreach on the channel, as a
recorded reason. Required notices go before nudges: a nudge also leaves room
for the required notices already waiting for the same customer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Priority = Literal["required", "nudge"]


@dataclass(frozen=True, kw_only=True)
class Cap:
    scope: Literal["customer", "case"]
    max: int
    per: timedelta | None = None  # None: over the whole life of the case

    def __post_init__(self) -> None:
        if self.max < 1:
            raise ValueError("a cap allows at least one message")
        if self.scope == "customer" and self.per is None:
            raise ValueError("a customer cap needs a window (per)")


@dataclass(frozen=True, kw_only=True)
class Sent:
    """A message already sent to the customer, from any workflow."""

    at: datetime
    case_id: str
    channel: str
    priority: Priority = "nudge"


def earliest_under_caps(
    caps: Sequence[Cap],
    sent: Sequence[Sent],
    *,
    case_id: str,
    priority: Priority,
    waiting_required: int,
    now: datetime,
) -> tuple[datetime | None, Cap | None]:
    """When the message may go under every cap, and the cap that held it back.

    (now, None) when it may go now; (None, cap) when it never may.
    """
    at, holding = now, None
    for cap in caps:
        counted = sorted(
            s.at
            for s in sent
            if s.at <= now
            and (cap.scope == "customer" or s.case_id == case_id)
            and (cap.per is None or s.at > now - cap.per)
        )
        reserve = waiting_required if priority == "nudge" and cap.scope == "customer" else 0
        over = len(counted) + reserve - cap.max + 1  # messages that must leave the window
        if over <= 0:
            continue
        if cap.per is None:
            return None, cap
        # Waiting required notices alone fill the cap: look again a window later.
        free = counted[over - 1] + cap.per if over <= len(counted) else now + cap.per
        if free > at:
            at, holding = free, cap
    return at, holding
