"""What can happen to a case: the inputs of the engine.

Each carries an optional `key` so that an input delivered twice (a retried
webhook, a replayed batch, a resumed simulation) is applied once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Event:
    key: str | None = None
    actor: str = "system"


@dataclass(frozen=True, kw_only=True)
class Opened(Event):
    """The trigger was accepted; decide eligibility and enrolment."""

    enrolled: bool = True
    cohort: str = "enrolled"


@dataclass(frozen=True, kw_only=True)
class TimerFired(Event):
    name: str


@dataclass(frozen=True, kw_only=True)
class MessageSent(Event):
    message_id: str
    channel: str


@dataclass(frozen=True, kw_only=True)
class MessageFailed(Event):
    message_id: str
    channel: str
    step: int
    reason: str
    permanent: bool = True


@dataclass(frozen=True, kw_only=True)
class MessageDeferred(Event):
    """Contact policy held a message back; it goes out at `until` by the same path."""

    message_id: str
    channel: str
    reason: str  # quiet_hours, fatigue_cap
    detail: str
    until: datetime


@dataclass(frozen=True, kw_only=True)
class LinkOpened(Event):
    channel: str


@dataclass(frozen=True, kw_only=True)
class IdentityChecked(Event):
    passed: bool
    method: str
    level: str = "known_facts"


@dataclass(frozen=True, kw_only=True)
class OutcomeSubmitted(Event):
    option: str
    values: Mapping[str, Any] = field(default_factory=dict)
    one_time_code_verified: bool = False


@dataclass(frozen=True, kw_only=True)
class WritebackSucceeded(Event):
    operation_key: str
    reference: str = ""


@dataclass(frozen=True, kw_only=True)
class WritebackFailed(Event):
    operation_key: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class BackendEvent(Event):
    """An event from the system of record, such as ``payment.posted``."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class OptedOut(Event):
    channel: str


@dataclass(frozen=True, kw_only=True)
class Disputed(Event):
    reason: str


@dataclass(frozen=True, kw_only=True)
class Reconciled(Event):
    """What the system of record holds for the case was compared with what was written back:
    effects applied more than once, and writebacks reported done that it does not hold."""

    duplicated: tuple[Mapping[str, Any], ...] = ()
    missing: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, kw_only=True)
class AgentAction(Event):
    """What an agent did with a case in the exception queue (`actor` is ``agent:NAME``).

    The only inputs a case in exception takes; each carries the agent's note.
    """

    note: str = ""


@dataclass(frozen=True, kw_only=True)
class WritebackRetried(AgentAction):
    """Send failed writebacks again, under their own idempotency keys (`round` counts retries).

    `settled` are pending writebacks the outbox holds as done: their success came while the
    case was in exception, so the case did not take it then."""

    operation_keys: tuple[str, ...]
    settled: tuple[str, ...] = ()
    round: int = 1


@dataclass(frozen=True, kw_only=True)
class ResolvedByAgent(AgentAction):
    """The agent settled the case with the customer: an outcome, written back like any other."""

    option: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class LinkResent(AgentAction):
    """Reopen the case and send the customer a new link on `channel`."""

    channel: str


@dataclass(frozen=True, kw_only=True)
class ClosedUnresolvable(AgentAction):
    """Nothing more can be done: close the case for good."""
