"""What the engine decides: a new state, history to append, and intents.

The runtime commits all of it in one transaction (the transactional outbox);
dispatchers carry the intents out afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from closeloop.engine.case import Case


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One line of a case's append-only history: who, what, when, why."""

    kind: str
    actor: str
    at: datetime
    reason: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SendMessage:
    idempotency_key: str
    channel: str
    address: str
    template: str
    step: int
    step_name: str
    priority: str = "nudge"


@dataclass(frozen=True, kw_only=True)
class RequestWriteback:
    idempotency_key: str
    operation: str
    argument: str | None
    outcome: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class OpenException:
    idempotency_key: str
    reason: str
    queue: str
    due_at: datetime
    detail: str


@dataclass(frozen=True, kw_only=True)
class RetryWriteback:
    """Run a failed writeback again: the same row, the same idempotency key at the core."""

    idempotency_key: str
    round: int


Intent = SendMessage | RequestWriteback | OpenException | RetryWriteback


@dataclass(frozen=True, kw_only=True)
class SetTimer:
    name: str
    due_at: datetime


@dataclass(frozen=True, kw_only=True)
class Decision:
    case: Case
    history: tuple[Entry, ...] = ()
    intents: tuple[Intent, ...] = ()
    timers: tuple[SetTimer, ...] = ()
    cancel_timers: bool = False
    rejected: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.history)
