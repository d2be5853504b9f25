"""In-memory fakes of the ports, shipped with closeloop for tests.

`InMemoryConnector` honours idempotency keys like a real core; the
`RecordingChannel` keeps what it was asked to send. `case_for` builds a case
as intake would, without a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from closeloop.channels import OutgoingMessage, SendResult
from closeloop.connectors import Account, WritebackResult
from closeloop.engine import Case, Contact, Status
from closeloop.errors import OperationalError
from closeloop.ids import case_id, short_digest
from closeloop.spec import CompiledSpec
from closeloop.spec.trigger import parse_trigger_data


@dataclass
class InMemoryConnector:
    accounts: dict[str, Account] = field(default_factory=dict)
    effects: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    calls: int = 0
    fail_next: int = 0
    unreadable: set[str] = field(default_factory=set)  # accounts the core cannot give now

    def read_account(self, account_id: str) -> Account | None:
        if account_id in self.unreadable:
            raise OperationalError(f"the system of record did not answer for {account_id}")
        return self.accounts.get(account_id)

    def execute(
        self, operation: str, argument: str | None, data: Mapping[str, Any], idempotency_key: str
    ) -> WritebackResult:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            return WritebackResult(ok=False, retryable=True, error="503 service unavailable")
        if idempotency_key not in self.effects:
            self.effects[idempotency_key] = (operation, dict(data))
        return WritebackResult(ok=True, reference=f"ref_{short_digest(idempotency_key, 8)}")


@dataclass
class RecordingChannel:
    sent: list[OutgoingMessage] = field(default_factory=list)
    fail: bool = False

    def send(self, message: OutgoingMessage) -> SendResult:
        if self.fail:
            return SendResult(status="failed", reason="unreachable address")
        self.sent.append(message)
        return SendResult(status="sent", provider_id=str(len(self.sent)))


def account(
    account_id: str = "A1",
    *,
    flags: list[str] | None = None,
    channels: tuple[str, ...] = ("email", "sms", "whatsapp"),
    time_zone: str = "America/New_York",
) -> Account:
    addresses = {
        "email": f"{account_id.lower()}@example.com",
        "sms": "+12125550123",
        "whatsapp": "+12125550123",
    }
    return Account(
        account_id=account_id,
        first_name="Ana",
        time_zone=time_zone,
        facts={
            "flags": flags or [],
            "balance": 250.0,
            "state": "NY",
            "product": "card",
            "days_past_due": 5,
        },
        contacts=tuple(
            {"channel": ch, "address": addresses[ch], "consent": True} for ch in channels
        ),
        payment_methods=(ON_FILE,),
        secrets={"date_of_birth": "1980-02-03", "postal_code": "10001"},
    )


# The card every test account has on file.
ON_FILE = {"id": "pm_1", "kind": "card", "brand": "Visa", "last4": "4242", "expiry": "08/28"}


def case_for(
    compiled: CompiledSpec,
    data: Mapping[str, Any],
    acct: Account,
    *,
    now: datetime,
    trigger_id: str = "t1",
) -> Case:
    """A case as trigger intake builds it, before the Opened event."""
    return Case(
        id=case_id(trigger_id, now),
        workflow=compiled.key,
        trigger_id=trigger_id,
        account_id=acct.account_id,
        status=Status.OUTREACH,
        data=parse_trigger_data(compiled.spec, data),
        account={
            **acct.facts,
            "first_name": acct.first_name,
            "payment_methods": [dict(m) for m in acct.payment_methods],
        },
        contacts=tuple(
            Contact(channel=c["channel"], address=c["address"], consent=c.get("consent", True))
            for c in acct.contacts
        ),
        time_zone=acct.time_zone,
        opened_at=now,
        updated_at=now,
    )
