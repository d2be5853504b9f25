"""The simulated system of record: accounts and a ledger of effects.

It honours idempotency keys the way payment APIs do: the same key replays
the stored response with no second effect. Faults are injected from a seeded
source per (key, time of the call): transient errors before the effect, and
timeouts after it (the effect happened but the caller never heard), so
retries and deduplication are exercised on every run, and a call repeated at
the same simulated instant meets the same fault.

`honours_keys = False` is a regression a drill or the demo injects (a release
of the core that ignores idempotency keys): a retried writeback is applied
again, which reconciliation must find.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from closeloop.connectors.port import Account, Effect, WritebackResult
from closeloop.ids import rng_for, short_digest

metadata = sa.MetaData()
sor_accounts = sa.Table(
    "sor_accounts",
    metadata,
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("record", sa.JSON, nullable=False),
)
sor_ledger = sa.Table(
    "sor_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(128), nullable=False, index=True),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("reference", sa.String(64), nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Index("ix_sor_ledger_case", "case_id"),
)


_record_of = sa.select(sor_accounts.c.record).where(
    sor_accounts.c.account_id == sa.bindparam("account_id")
)
_reference_of = (
    sa.select(sor_ledger.c.reference)
    .where(sor_ledger.c.idempotency_key == sa.bindparam("key"))
    .order_by(sor_ledger.c.id)
    .limit(1)
)
_effects_of = (
    sa.select(sor_ledger.c.operation, sor_ledger.c.idempotency_key, sor_ledger.c.reference)
    .where(sor_ledger.c.case_id == sa.bindparam("case_id"))
    .order_by(sor_ledger.c.id)
)
_record_effect = sor_ledger.insert()


class LedgerCore:
    """A system of record in its own database, with seeded fault injection."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        clock: Any,
        seed: int = 0,
        error_rate: float = 0.0,
        timeout_after_commit_rate: float = 0.0,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.seed = seed
        self.error_rate = error_rate
        self.timeout_rate = timeout_after_commit_rate
        self.honours_keys = True
        # Account records are written only by `add_accounts`, in this process:
        # keep them decoded (the demo reads each several times).
        self._records: dict[str, dict[str, Any]] = {}
        metadata.create_all(engine)

    def add_accounts(self, records: list[dict[str, Any]]) -> None:
        with self.engine.begin() as c:
            existing = {r[0] for r in c.execute(sa.select(sor_accounts.c.account_id))}
            rows = [
                {"account_id": r["account_id"], "record": r}
                for r in records
                if r["account_id"] not in existing
            ]
            if rows:
                c.execute(sor_accounts.insert(), rows)
        self._records.clear()

    def _record(self, c: sa.Connection | None, account_id: str) -> dict[str, Any] | None:
        record = self._records.get(account_id)
        if record is None:
            if c is None:
                with self.engine.connect() as own:
                    return self._record(own, account_id)
            row = c.execute(_record_of, {"account_id": account_id}).first()
            if row is None:
                return None
            record = self._records[account_id] = row[0]
        return record

    def read_account(self, account_id: str) -> Account | None:
        record = self._record(None, account_id)
        if record is None:
            return None
        return Account(
            account_id=account_id,
            first_name=record.get("first_name", ""),
            locale=record.get("locale", "en"),
            time_zone=record.get("time_zone"),
            facts=dict(record.get("facts", {})),
            contacts=tuple(record.get("contacts", [])),
            payment_methods=tuple(record.get("payment_methods", [])),
            secrets=dict(record.get("secrets", {})),
        )

    def execute(
        self, operation: str, argument: str | None, data: Mapping[str, Any], idempotency_key: str
    ) -> WritebackResult:
        with self.engine.begin() as c:
            rng = rng_for(self.seed, "ledger", idempotency_key, _iso(self.clock()))
            fails, times_out = rng.random() < self.error_rate, rng.random() < self.timeout_rate
            stored = c.execute(_reference_of, {"key": idempotency_key}).first()
            if stored is not None and self.honours_keys:
                if times_out:
                    return WritebackResult(ok=False, retryable=True, error="timeout")
                return WritebackResult(ok=True, reference=stored[0])
            if fails:
                return WritebackResult(ok=False, retryable=True, error="503 service unavailable")
            account_id = str(data.get("account_id", ""))
            record = self._record(c, account_id)
            if record is None:
                return WritebackResult(ok=False, error=f"422 unknown account {account_id}")
            if "closed" in record.get("facts", {}).get("flags", []):
                return WritebackResult(ok=False, error="422 account is closed")
            reference = f"{operation[:3]}_{short_digest(idempotency_key)}"
            if stored is not None:  # applied again: a new reference, as a new effect gets
                reference += f"_{short_digest(_iso(self.clock()))[:6]}"
            c.execute(
                _record_effect,
                {
                    "idempotency_key": idempotency_key,
                    "operation": operation,
                    "account_id": account_id,
                    "case_id": str(data.get("case_id", "")),
                    "payload": json.loads(json.dumps({"argument": argument, **data}, default=str)),
                    "reference": reference,
                    "at": _iso(self.clock()),
                },
            )
        if times_out:
            # The effect is committed; the caller only sees a timeout and will retry.
            return WritebackResult(ok=False, retryable=True, error="timeout after commit")
        return WritebackResult(ok=True, reference=reference)

    reconciles = True

    def effects(self, case_id: str, account_id: str = "") -> list[Effect]:
        with self.engine.connect() as c:
            rows = c.execute(_effects_of, {"case_id": case_id}).all()
        return [Effect(operation=o, idempotency_key=k, reference=r) for o, k, r in rows]

    def effect_count(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(sor_ledger)).scalar_one())

    def duplicate_effects(self) -> int:
        """Effects recorded twice for one (case, operation): must always be zero."""
        inner = (
            sa.select(sor_ledger.c.case_id, sor_ledger.c.operation)
            .group_by(sor_ledger.c.case_id, sor_ledger.c.operation)
            .having(sa.func.count() > 1)
            .subquery()
        )
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(inner)).scalar_one())


def _iso(value: datetime) -> str:
    return value.isoformat()
