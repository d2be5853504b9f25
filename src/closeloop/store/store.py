"""Every database operation of the engine, in one place.

`Store.transaction()` yields a `Tx`; what a Tx writes commits together or not
at all. `Tx.commit_decisions` writes a batch of engine decisions (new case
state, history, timers, outbox intents, exception rows) with one statement
per table, which is what keeps bookkeeping close to the speed of raw SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from closeloop.engine import (
    Case,
    Decision,
    OpenException,
    RequestWriteback,
    SendMessage,
    Status,
)
from closeloop.store import database
from closeloop.store import queries as q
from closeloop.store.rows import case_from_row, case_to_row
from closeloop.store.tables import (
    backend_events,
    case_events,
    cases,
    exceptions,
    links,
    outbox,
    timers,
    workflows,
)


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    id: int
    case_id: str
    kind: str
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, kw_only=True)
class Applied:
    """A decision to commit, with the key of the input that produced it."""

    decision: Decision
    dedupe_key: str | None = None
    new: bool = False
    fired_timers: tuple[str, ...] = ()


class Store:
    """The engine's database (SQLite file or PostgreSQL)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @classmethod
    def connect(cls, url: str) -> Store:
        return cls(database.create_engine(url))

    def upgrade(self) -> None:
        database.upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.engine.begin() as connection:
            yield Tx(connection, self.dialect)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A Tx for reads only (on SQLite it takes no write lock)."""
        with self.engine.connect() as connection:
            yield Tx(connection.execution_options(closeloop_read_only=True), self.dialect)

    def due_work(self, now: datetime) -> dict[str, bool]:
        """Which kinds of work are due now, in one cheap read."""
        with self.read() as tx:
            row = tx.c.execute(q.due_work, {"now": now}).one()
        return {
            "timers": bool(row.timers),
            "message": bool(row.message),
            "writeback": bool(row.writeback),
        }


class Tx:
    def __init__(self, connection: sa.Connection, dialect: str) -> None:
        self.c = connection
        self.dialect = dialect

    # -- workflows ---------------------------------------------------------
    def save_workflow(
        self, key: str, workflow: str, version: int, source: str, now: datetime
    ) -> None:
        existing = self.c.execute(
            sa.select(workflows.c.source).where(workflows.c.key == key)
        ).scalar_one_or_none()
        if existing is None:
            self.c.execute(
                workflows.insert().values(
                    key=key, workflow=workflow, version=version, source=source, loaded_at=now
                )
            )

    def workflow_source(self, key: str) -> str | None:
        stmt = sa.select(workflows.c.source).where(workflows.c.key == key)
        return self.c.execute(stmt).scalar_one_or_none()

    # -- cases -------------------------------------------------------------
    def cases_by_triggers(self, trigger_ids: Sequence[str]) -> dict[str, Case]:
        """Cases already opened for any of these trigger ids, by trigger id."""
        if not trigger_ids:
            return {}
        rows = self.c.execute(q.cases_by_triggers, {"ids": list(trigger_ids)})
        return {row.trigger_id: case_from_row(row._mapping) for row in rows}

    def load_case(self, case_id: str) -> Case | None:
        row = self.c.execute(q.case_by_id, {"case_id": case_id}).first()
        return case_from_row(row._mapping) if row else None

    def load_case_for_event(self, case_id: str, key: str | None) -> tuple[Case | None, bool]:
        """The case, locked for update, and whether an event with `key` was applied to it."""
        locked = self.dialect == "postgresql"
        stmt = q.case_with_seen_locked if locked else q.case_with_seen
        row = self.c.execute(stmt, {"case_id": case_id, "key": key or ""}).first()
        if row is None:
            return None, False
        return case_from_row(row._mapping), bool(key) and bool(row.seen)

    def load_cases(self, case_ids: Sequence[str]) -> dict[str, Case]:
        if not case_ids:
            return {}
        rows = self.c.execute(q.cases_by_ids, {"ids": list(case_ids)}).all()
        return {row.id: case_from_row(row._mapping) for row in rows}

    def open_cases_for_account(self, account_id: str) -> list[Case]:
        """The account's live cases, locked for update on PostgreSQL."""
        live = [s.value for s in Status if not s.terminal]
        stmt = (
            sa.select(cases)
            .where(cases.c.account_id == account_id, cases.c.status.in_(live))
            .order_by(cases.c.opened_at)
        )
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        return [case_from_row(r._mapping) for r in self.c.execute(stmt).all()]

    def seen(self, case_id: str, dedupe_key: str) -> bool:
        return self.c.execute(q.seen, {"case_id": case_id, "key": dedupe_key}).first() is not None

    def history(self, case_id: str) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in self.c.execute(q.history, {"case_id": case_id})]

    def status_counts(self) -> dict[str, int]:
        stmt = sa.select(cases.c.status, sa.func.count()).group_by(cases.c.status)
        return {status: count for status, count in self.c.execute(stmt).all()}

    def first_case_id(self, status: Status) -> str | None:
        stmt = sa.select(cases.c.id).where(cases.c.status == status.value).order_by(cases.c.id)
        return self.c.execute(stmt.limit(1)).scalar_one_or_none()

    def all_cases(self) -> Iterator[Case]:
        for row in self.c.execute(sa.select(cases).order_by(cases.c.id)):
            yield case_from_row(row._mapping)

    # -- writing decisions -------------------------------------------------
    def commit_decisions(self, batch: Iterable[Applied], now: datetime) -> None:
        """Write new state, history, timers and intents of many decisions at once."""
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        fired: list[dict[str, Any]] = []
        cancelled: set[str] = set()
        upserts: dict[tuple[str, str], datetime] = {}
        boxes: list[dict[str, Any]] = []
        excs: list[dict[str, Any]] = []
        for item in batch:
            d = item.decision
            for name in item.fired_timers:
                fired.append({"b_case": d.case.id, "b_name": name})
            if not d.history:
                continue
            row = case_to_row(d.case)
            if item.new:
                inserts.append(row)
            else:
                updates.append({**row, "b_id": row["id"]})
            first_seq = d.case.seq - len(d.history) + 1
            for offset, entry in enumerate(d.history):
                events.append(
                    {
                        "case_id": d.case.id,
                        "seq": first_seq + offset,
                        "kind": entry.kind,
                        "actor": entry.actor,
                        "at": entry.at,
                        "reason": entry.reason,
                        "data": dict(entry.data),
                        "dedupe_key": item.dedupe_key if offset == 0 else None,
                    }
                )
            if d.cancel_timers:
                # Later decisions of the same case in this batch may set timers again.
                cancelled.add(d.case.id)
                for pair in [p for p in upserts if p[0] == d.case.id]:
                    del upserts[pair]
            for timer in d.timers:
                upserts[(d.case.id, timer.name)] = timer.due_at
            for intent in d.intents:
                if isinstance(intent, OpenException):
                    excs.append(
                        {
                            "id": intent.idempotency_key,
                            "case_id": d.case.id,
                            "reason": intent.reason,
                            "queue": intent.queue,
                            "detail": intent.detail,
                            "opened_at": now,
                            "due_at": intent.due_at,
                            "status": "open",
                        }
                    )
                    continue
                kind = "message" if isinstance(intent, SendMessage) else "writeback"
                boxes.append(
                    {
                        "case_id": d.case.id,
                        "kind": kind,
                        "idempotency_key": intent.idempotency_key,
                        "payload": _intent_payload(intent),
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "leased_until": None,
                        "created_at": now,
                        "updated_at": now,
                        "result": None,
                    }
                )
        deletes = [{"b_case": case_id} for case_id in sorted(cancelled)]
        timer_rows = [{"case_id": c, "name": n, "due_at": due} for (c, n), due in upserts.items()]
        c = self.c
        if inserts:
            c.execute(cases.insert(), inserts)
        if updates:
            c.execute(q.update_case, [{k: u[k] for k in q.UPDATE_CASE_KEYS} for u in updates])
        if events:
            c.execute(case_events.insert(), events)
        if fired:
            c.execute(q.delete_timer, fired)
        if deletes:
            c.execute(q.delete_case_timers, deletes)
        if timer_rows:
            c.execute(q.upsert_timer[self.dialect], timer_rows)
        if boxes:
            c.execute(outbox.insert(), boxes)
        if excs:
            c.execute(exceptions.insert(), excs)

    # -- due work ----------------------------------------------------------
    def claim_due_timers(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """Due timers, oldest first; on PostgreSQL rows other workers hold are skipped."""
        stmt = q.due_timers_locked if self.dialect == "postgresql" else q.due_timers
        return [(r.case_id, r.name) for r in self.c.execute(stmt, {"now": now, "limit": limit})]

    def next_timer_due(self) -> datetime | None:
        return self.c.execute(q.next_timer).scalar_one_or_none()

    def delete_timers(self, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            self.c.execute(
                timers.delete().where(
                    timers.c.case_id == sa.bindparam("b_case"),
                    timers.c.name == sa.bindparam("b_name"),
                ),
                [{"b_case": c, "b_name": n} for c, n in pairs],
            )

    def claim_outbox(self, kind: str, now: datetime, limit: int) -> list[OutboxItem]:
        stmt = q.due_outbox_locked if self.dialect == "postgresql" else q.due_outbox
        rows = self.c.execute(stmt, {"kind": kind, "now": now, "limit": limit})
        return [
            OutboxItem(
                id=r.id,
                case_id=r.case_id,
                kind=r.kind,
                idempotency_key=r.idempotency_key,
                payload=dict(r.payload),
                attempts=r.attempts,
            )
            for r in rows
        ]

    def lease_outbox(self, ids: Sequence[int], until: datetime) -> None:
        """Hold claimed rows while they are carried out with no transaction open."""
        if ids:
            self.c.execute(q.lease_outbox, {"ids": list(ids), "until": until})

    def release_leases(self, now: datetime) -> int:
        """End every lease at once: for a single process resuming after a crash."""
        stmt = outbox.update().where(
            outbox.c.status == "pending", outbox.c.leased_until.is_not(None)
        )
        return self.c.execute(stmt.values(leased_until=None, updated_at=now)).rowcount

    def next_outbox_due(self) -> datetime | None:
        return self.c.execute(q.next_outbox).scalar_one_or_none()

    def finish_outbox(
        self, item_id: int, status: str, result: dict[str, Any], now: datetime
    ) -> None:
        self.c.execute(
            q.finish_outbox, {"b_id": item_id, "b_status": status, "b_result": result, "b_now": now}
        )

    def retry_outbox(
        self, item_id: int, at: datetime, result: dict[str, Any], now: datetime
    ) -> None:
        self.c.execute(
            q.retry_outbox, {"b_id": item_id, "b_at": at, "b_result": result, "b_now": now}
        )

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        stmt = sa.select(outbox.c.kind, outbox.c.status, sa.func.count()).group_by(
            outbox.c.kind, outbox.c.status
        )
        return {(k, s): n for k, s, n in self.c.execute(stmt).all()}

    def messages_by_channel(self) -> dict[str, int]:
        channel = outbox.c.payload["channel"].as_string()
        stmt = (
            sa.select(channel, sa.func.count())
            .where(outbox.c.kind == "message", outbox.c.status == "done")
            .group_by(channel)
        )
        return {ch: n for ch, n in self.c.execute(stmt).all()}

    # -- exceptions, links, backend events ---------------------------------
    def save_link(
        self, token_hash: str, case_id: str, channel: str, now: datetime, expires_at: datetime
    ) -> None:
        self.c.execute(
            links.insert().values(
                token_hash=token_hash,
                case_id=case_id,
                channel=channel,
                created_at=now,
                expires_at=expires_at,
            )
        )

    def link(self, token_hash: str) -> dict[str, Any] | None:
        row = self.c.execute(q.link_by_hash, {"token_hash": token_hash}).first()
        return dict(row._mapping) if row else None

    def use_link(self, token_hash: str, now: datetime) -> bool:
        """Mark the link used; False if someone else used it first."""
        result = self.c.execute(q.use_link, {"b_hash": token_hash, "b_now": now})
        return result.rowcount == 1

    def backend_event_received(self, event_id: str) -> bool:
        stmt = sa.select(backend_events.c.id).where(backend_events.c.id == event_id)
        return self.c.execute(stmt).first() is not None

    def record_backend_event(
        self, event_id: str, type_: str, account_id: str, now: datetime, closed: int
    ) -> None:
        """Remember a backend event (check `backend_event_received` first)."""
        self.c.execute(
            backend_events.insert().values(
                id=event_id, type=type_, account_id=account_id, received_at=now, cases_closed=closed
            )
        )


def _intent_payload(intent: SendMessage | RequestWriteback) -> dict[str, Any]:
    if isinstance(intent, SendMessage):
        return {
            "channel": intent.channel,
            "address": intent.address,
            "template": intent.template,
            "step": intent.step,
            "step_name": intent.step_name,
        }
    return {
        "operation": intent.operation,
        "argument": intent.argument,
        "outcome": intent.outcome,
        "data": dict(intent.payload),
    }
