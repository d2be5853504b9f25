"""Provider rate limits: messages per second per sender, as a token bucket.

A message over its sender's rate is not sent and not failed: its outbox row
waits the fraction of a second until a token is free, and the rest of the
batch (other channels, other senders) goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pace:
    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0:
            raise ValueError("a rate limit must allow more than 0 messages per second")
        self.rate = per_second
        self.capacity = max(1.0, per_second)  # at most one second's worth at once
        self.clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 if a message may go now (and count it), else the seconds until one may."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate
