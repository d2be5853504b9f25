"""The connector port: read an account, carry out a writeback; and, where the system of
record can say what it holds for a case, list its effects (reconciliation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, kw_only=True)
class Account:
    """What the system of record says about an account."""

    account_id: str
    first_name: str
    locale: str = "en"
    time_zone: str | None = None
    # Fields every rule may read as `account.*` (see closeloop.spec.rules.ACCOUNT_FIELDS).
    facts: Mapping[str, Any] = field(default_factory=dict)
    contacts: tuple[Mapping[str, Any], ...] = ()
    # Ways to pay already on file: {"id", "kind" (card or bank), "brand", "last4",
    # "expiry"}; what the customer is shown, never a card or account number.
    payment_methods: tuple[Mapping[str, str], ...] = ()
    # Known facts for identity checks; never copied into a case.
    secrets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class WritebackResult:
    ok: bool
    reference: str = ""
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None  # seconds the core asked the caller to wait (429, 503)
    # Taken, not yet confirmed (an instruction file the core has not acknowledged): ask
    # again after `retry_after` seconds; the wait uses up no attempt, only the deadline.
    pending: bool = False


class Connector(Protocol):
    def read_account(self, account_id: str) -> Account | None:
        """The account, or None when the system of record does not know it."""
        ...

    def execute(
        self, operation: str, argument: str | None, data: Mapping[str, Any], idempotency_key: str
    ) -> WritebackResult:
        """Carry out one writeback; the same key never has a second effect."""
        ...


@dataclass(frozen=True, kw_only=True)
class Effect:
    """One change the system of record holds for a case: what it did, under which key."""

    operation: str
    idempotency_key: str
    reference: str = ""


@runtime_checkable
class Reconcilable(Protocol):
    """A connector whose system of record can list what it applied for a case."""

    @property
    def reconciles(self) -> bool:
        """Whether this connector is set up to list effects (a mapping may not say how)."""
        ...

    def effects(self, case_id: str, account_id: str) -> list[Effect]:
        """Every effect the system of record applied for this case, in the order applied;
        raise OperationalError when it cannot answer now."""
        ...
