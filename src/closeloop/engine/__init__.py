"""The case engine: a pure function from (case, event, spec, now) to a decision."""

from __future__ import annotations

from closeloop.engine.case import LIVE, TERMINAL, Case, Contact, Status
from closeloop.engine.decision import (
    Decision,
    Entry,
    Intent,
    OpenException,
    RequestWriteback,
    SendMessage,
    SetTimer,
)
from closeloop.engine.events import (
    BackendEvent,
    Disputed,
    Event,
    IdentityChecked,
    LinkOpened,
    MessageDeferred,
    MessageFailed,
    MessageSent,
    Opened,
    OptedOut,
    OutcomeSubmitted,
    Reconciled,
    TimerFired,
    WritebackFailed,
    WritebackSucceeded,
)
from closeloop.engine.reach import region_of, rules_for, zones_of
from closeloop.engine.step import CADENCE, EXPIRE, step

__all__ = [
    "CADENCE",
    "EXPIRE",
    "LIVE",
    "TERMINAL",
    "BackendEvent",
    "Case",
    "Contact",
    "Decision",
    "Disputed",
    "Entry",
    "Event",
    "IdentityChecked",
    "Intent",
    "LinkOpened",
    "MessageDeferred",
    "MessageFailed",
    "MessageSent",
    "OpenException",
    "Opened",
    "OptedOut",
    "OutcomeSubmitted",
    "Reconciled",
    "RequestWriteback",
    "SendMessage",
    "SetTimer",
    "Status",
    "TimerFired",
    "WritebackFailed",
    "WritebackSucceeded",
    "region_of",
    "rules_for",
    "step",
    "zones_of",
]
