"""Protecting a struggling system of record: a circuit breaker and a retry budget.

Both are per connector and take the time from the caller (sans I/O), so the
simulator drives them with its clock.

The **circuit breaker** is closed while writes go through. After `failures`
consecutive failures a retry could fix (timeouts, dropped connections, 429,
5xx: the core's health, not the caller's mistakes) it opens: no writeback is
sent for `open_for`, and waiting ones are held back, not failed. Then it is
half-open: exactly one writeback goes as a probe; success closes it, failure
opens it again for twice as long (up to `longest`). A writeback whose
failure leaves the breaker open (the probe, or the one that tripped it)
waits for the core: such a failure does not use up its attempts, only its
deadline.

The **retry budget** lets retries be at most `ratio` of the first attempts
sent in the last minute, plus `floor` a minute, so a flapping core is not
hammered by a pile of retries; a retry over budget waits, it is not failed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

State = Literal["closed", "open", "half_open"]
_MINUTE = timedelta(minutes=1)


@dataclass
class CircuitBreaker:
    failures: int = 5
    open_for: timedelta = timedelta(seconds=30)
    longest: timedelta = timedelta(minutes=10)
    state: State = "closed"
    openings: int = 0  # how many times it opened from closed
    _failed: int = 0
    _wait: timedelta = field(default=timedelta(0))
    _until: datetime | None = None
    _probing: bool = False

    def allows(self, now: datetime) -> bool:
        """May a writeback go now? In half-open, only the one probe may."""
        if self.state == "closed":
            return True
        if self.state == "open":
            assert self._until is not None
            if now < self._until:
                return False
            self.state, self._probing = "half_open", False
        if self._probing:
            return False
        self._probing = True
        return True

    def reopens_at(self, now: datetime) -> datetime:
        """When a held writeback should be tried again."""
        return self._until if self.state == "open" and self._until else now + timedelta(seconds=1)

    def record(self, healthy: bool, now: datetime) -> bool:
        """Record a writeback's result (`healthy`: not a failure a retry could fix).

        Returns True when this result opened a closed breaker (a failed probe
        opens it again, for longer, but that is the same opening).
        """
        if healthy:
            self.state, self._failed, self._wait, self._probing = "closed", 0, timedelta(0), False
            return False
        if self.state == "half_open":
            self._wait = min(self.longest, self._wait * 2 or self.open_for)
            self._open(now)
            return False
        self._failed += 1
        if self.state == "closed" and self._failed >= self.failures:
            self._wait = self.open_for
            self._open(now)
            self.openings += 1
            return True
        return False

    def _open(self, now: datetime) -> None:
        self.state, self._until, self._probing = "open", now + self._wait, False


@dataclass
class RetryBudget:
    ratio: float = 0.2
    floor: int = 10  # retries a minute allowed whatever the traffic
    _firsts: deque[datetime] = field(default_factory=deque)
    _retries: deque[datetime] = field(default_factory=deque)

    def allows(self, retry: bool, now: datetime) -> bool:
        """May this attempt go now? First attempts always may; they also earn retries."""
        for times in (self._firsts, self._retries):
            while times and times[0] <= now - _MINUTE:
                times.popleft()
        if not retry:
            self._firsts.append(now)
            return True
        if len(self._retries) >= self.floor + self.ratio * len(self._firsts):
            return False
        self._retries.append(now)
        return True
