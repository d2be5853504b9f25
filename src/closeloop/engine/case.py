"""The case: one customer, one problem, from trigger to a single terminal state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OUTREACH = "outreach"  # eligible and enrolled; contacting the customer
    ENGAGED = "engaged"  # the customer opened a link
    WRITING_BACK = "writing_back"  # an outcome was chosen; the system of record is being told
    RESOLVED = "resolved"
    RESOLVED_ELSEWHERE = "resolved_elsewhere"
    INELIGIBLE = "ineligible"
    NOT_ENROLLED = "not_enrolled"
    OPTED_OUT = "opted_out"
    EXPIRED = "expired"
    EXCEPTION = "exception"  # off the happy path: waiting for an agent
    UNRESOLVABLE = "unresolvable"  # an agent closed it: nothing more can be done

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {
        Status.RESOLVED,
        Status.RESOLVED_ELSEWHERE,
        Status.INELIGIBLE,
        Status.NOT_ENROLLED,
        Status.OPTED_OUT,
        Status.EXPIRED,
        Status.EXCEPTION,
        Status.UNRESOLVABLE,
    }
)
LIVE = frozenset(set(Status) - TERMINAL)


@dataclass(frozen=True, kw_only=True)
class Contact:
    """A channel address the customer gave, and whether we may use it."""

    channel: str
    address: str
    consent: bool = True
    notice: str | None = None  # the consent notice version the system of record holds


@dataclass(frozen=True, kw_only=True)
class Case:
    """A case's current state. History lives beside it, append-only."""

    id: str
    workflow: str
    trigger_id: str
    account_id: str
    status: Status
    data: Mapping[str, Any]
    account: Mapping[str, Any]
    contacts: tuple[Contact, ...] = ()
    time_zone: str | None = None
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    cohort: str = "enrolled"
    next_step: int = 0
    link_opened: bool = False
    verified: bool = False
    identity_level: str = "none"
    identity_failures: int = 0
    code_failures: int = 0  # wrong one-time codes
    outcome: str | None = None
    submission: Mapping[str, Any] = field(default_factory=dict)
    pending_writebacks: tuple[str, ...] = ()
    touches: int = 0
    agent_touched: bool = False
    reason: str | None = None
    seq: int = 0

    def evolve(self, **changes: Any) -> Case:
        """A copy with `changes` applied (the engine's hottest call).

        `dataclasses.replace` re-runs ``__init__`` over every field; a case is
        copied several times per step, so copy the instance dict instead.
        """
        unknown = changes.keys() - _CASE_FIELDS
        if unknown:
            raise TypeError(f"Case has no field(s) {', '.join(sorted(unknown))}")
        copy = object.__new__(Case)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy

    def thawed(self) -> Case:
        """A private copy for one owner to `amend` in place (the engine's draft of a step).

        Until the owner hands it on, no one else holds it; after that it is
        as frozen as any case.
        """
        copy = object.__new__(Case)
        copy.__dict__.update(self.__dict__)
        return copy

    def amend(self, **changes: Any) -> None:
        """Apply `changes` in place: only on a copy from `thawed` that is not yet handed on."""
        unknown = changes.keys() - _CASE_FIELDS
        if unknown:
            raise TypeError(f"Case has no field(s) {', '.join(sorted(unknown))}")
        self.__dict__.update(changes)

    @classmethod
    def restore(cls, state: Mapping[str, Any], **columns: Any) -> Case:
        """A stored case, from its state and columns; missing fields take their defaults.

        Stored values were valid when written, so this skips ``__init__``.
        """
        values = {**_CASE_DEFAULTS, **state, **columns}
        for name, factory in _CASE_FACTORIES.items():
            if name not in values:
                values[name] = factory()
        unknown = values.keys() - _CASE_FIELDS
        if unknown:
            raise TypeError(f"Case has no field(s) {', '.join(sorted(unknown))}")
        missing = _CASE_FIELDS - values.keys()
        if missing:
            raise TypeError(f"stored case lacks {', '.join(sorted(missing))}")
        case = object.__new__(cls)
        case.__dict__.update(values)
        return case

    def contact_for(self, channel: str) -> Contact | None:
        for contact in self.contacts:
            if contact.channel == channel and contact.consent:
                return contact
        return None


_CASE_FIELDS = frozenset(f.name for f in fields(Case))
_CASE_DEFAULTS = {f.name: f.default for f in fields(Case) if f.default is not MISSING}
_CASE_FACTORIES = {
    f.name: f.default_factory for f in fields(Case) if f.default_factory is not MISSING
}
