"""Every database operation of the engine, in one place.

`Store.transaction()` yields a `Tx`; what a Tx writes commits together or not
at all. `Tx.commit_decisions` writes a batch of engine decisions (new case
state, history, timers, outbox intents, exception rows) with one statement
per table, which is what keeps bookkeeping close to the speed of raw SQL.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from closeloop.contact import ConsentRecord, Sent
from closeloop.engine import (
    Case,
    Decision,
    OpenException,
    RequestWriteback,
    RetryWriteback,
    SendMessage,
    Status,
)
from closeloop.store import database
from closeloop.store import queries as q
from closeloop.store.driver import Dialect, dumps
from closeloop.store.export_queries import ExportQueries
from closeloop.store.report_queries import ReportQueries
from closeloop.store.rollout_queries import RolloutQueries
from closeloop.store.staff_queries import StaffQueries
from closeloop.store.tables import (
    UTCDateTime,
    backend_events,
    case_events,
    cases,
    connector_log,
    consents,
    delivery_receipts,
    inbound_messages,
    outbox,
    timers,
    unsubscribe_tokens,
    webhook_rejections,
    workflows,
)
from closeloop.store.visit_queries import VisitQueries


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    id: int
    case_id: str
    kind: str
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime | None = None


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
        self.driver = Dialect.of(self.dialect)
        self.cases = CaseCache()

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
            tx = Tx(connection, self.driver, self.cases)
            yield tx
        self.cases.remember(tx.fresh.values())  # committed: now they may be reused

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A Tx for reads only (on SQLite it takes no write lock)."""
        with self.engine.connect() as connection:
            tx = Tx(connection.execution_options(closeloop_read_only=True), self.driver, self.cases)
            yield tx
        self.cases.remember(tx.fresh.values())

    def due_work(self, now: datetime) -> dict[str, bool]:
        """Which kinds of work are due now, in one cheap read."""
        with self.read() as tx:
            row = tx.c.execute(q.due_work, {"now": now}).one()
        return {
            "timers": bool(row.timers),
            "message": bool(row.message),
            "writeback": bool(row.writeback),
        }


class CaseCache:
    """Decoded cases by id, reused while their stored `seq` is unchanged.

    Every change to a case bumps its `seq`, and (case, seq) is unique in the
    history, so a committed (id, seq) has exactly one state in any process:
    a reader that finds the same seq in the row can skip decoding it. Only
    committed states are remembered (see `Store.transaction`).
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._cases: dict[str, Case] = {}
        self._lock = threading.Lock()

    def get(self, case_id: str, seq: int) -> Case | None:
        case = self._cases.get(case_id)
        return case if case is not None and case.seq == seq else None

    def remember(self, cases: Iterable[Case]) -> None:
        with self._lock:
            for case in cases:
                self._cases.pop(case.id, None)
                self._cases[case.id] = case  # newest last
            excess = len(self._cases) - self.size
            if excess > 0:
                for case_id in list(itertools.islice(self._cases, excess + self.size // 10)):
                    del self._cases[case_id]


class Tx(RolloutQueries, ExportQueries, StaffQueries, ReportQueries, VisitQueries):
    """One transaction: SQLAlchemy's connection, and its driver cursor for the hot path."""

    def __init__(self, connection: sa.Connection, driver: Dialect, cache: CaseCache) -> None:
        self.c = connection
        self.d = driver
        self.dialect = driver.name
        self._cursor: Any = None
        self._cache = cache
        self.fresh: dict[str, Case] = {}  # read or written here; cached once committed

    def _case(self, row: Sequence[Any]) -> Case:
        case = self._cache.get(row[0], row[9])
        if case is None:
            case = self.d.read_case(row)
            self.fresh[case.id] = case
        return case

    @property
    def cursor(self) -> Any:
        """The driver's cursor, inside the transaction SQLAlchemy began."""
        if self._cursor is None:
            self._cursor = self.c.connection.driver_connection.cursor()  # type: ignore[union-attr]
        return self._cursor

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

    def workflow_source_by_name(self, workflow: str) -> str | None:
        """The source of the newest version registered under this workflow's name."""
        stmt = (
            sa.select(workflows.c.source)
            .where(workflows.c.workflow == workflow)
            .order_by(workflows.c.version.desc())
            .limit(1)
        )
        return self.c.execute(stmt).scalar_one_or_none()

    # -- cases -------------------------------------------------------------
    def _rows(self, name: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        cursor = self.cursor
        cursor.execute(self.d.sql[name], params)
        rows: list[Sequence[Any]] = cursor.fetchall()
        return rows

    def cases_by_triggers(self, trigger_ids: Sequence[str]) -> dict[str, Case]:
        """Cases already opened for any of these trigger ids, by trigger id."""
        if not trigger_ids:
            return {}
        rows = self._rows("cases_by_triggers", {"ids": self.d.ids(trigger_ids)})
        return {case.trigger_id: case for case in map(self._case, rows)}

    def load_case(self, case_id: str) -> Case | None:
        rows = self._rows("case_by_id", {"case_id": case_id})
        return self._case(rows[0]) if rows else None

    def load_case_for_event(self, case_id: str, key: str | None) -> tuple[Case | None, bool]:
        """The case, locked for update, and whether an event with `key` was applied to it."""
        rows = self._rows("case_with_seen", {"case_id": case_id, "key": key or ""})
        if not rows:
            return None, False
        return self._case(rows[0]), bool(key) and bool(rows[0][-1])

    def load_cases(self, case_ids: Sequence[str]) -> dict[str, Case]:
        if not case_ids:
            return {}
        rows = self._rows("cases_by_ids", {"ids": self.d.ids(case_ids)})
        return {case.id: case for case in map(self._case, rows)}

    def open_cases_for_account(self, account_id: str) -> list[Case]:
        """The account's live cases, oldest first, locked for update on PostgreSQL."""
        rows = self._rows("open_cases_for_account", {"account_id": account_id})
        return [self._case(row) for row in rows]

    def control_cases_for_account(self, account_id: str, since: datetime) -> list[Case]:
        """The account's cases left out of a rollout (not enrolled) opened since `since`."""
        params = {"account_id": account_id, "since": self.d.time(since)}
        return [self._case(row) for row in self._rows("control_cases_for_account", params)]

    def seen_keys(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (case id, event key) pairs were already applied."""
        if not pairs:
            return set()
        return {(c, k) for c, k in self._rows("seen_keys", self.d.pairs(pairs))}

    def seen(self, case_id: str, dedupe_key: str) -> bool:
        return self.c.execute(q.seen, {"case_id": case_id, "key": dedupe_key}).first() is not None

    def history(self, case_id: str) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in self.c.execute(q.history, {"case_id": case_id})]

    def queues(self, now: datetime) -> dict[str, tuple[int, datetime | None]]:
        """Work due now and not leased, by kind (timer, message, writeback): how many
        items, and when the oldest of them fell due."""
        leased = sa.and_(outbox.c.leased_until.is_not(None), outbox.c.leased_until > now)
        due = (
            sa.select(outbox.c.kind, sa.func.count(), sa.func.min(outbox.c.next_attempt_at))
            .where(outbox.c.status == "pending", outbox.c.next_attempt_at <= now, ~leased)
            .group_by(outbox.c.kind)
        )
        found = {kind: (int(n), oldest) for kind, n, oldest in self.c.execute(due)}
        timer_count, timer_oldest = self.c.execute(
            sa.select(sa.func.count(), sa.func.min(timers.c.due_at)).where(timers.c.due_at <= now)
        ).one()
        found["timer"] = (int(timer_count), timer_oldest)
        return {kind: found.get(kind, (0, None)) for kind in ("timer", "message", "writeback")}

    def status_counts(self) -> dict[str, int]:
        stmt = sa.select(cases.c.status, sa.func.count()).group_by(cases.c.status)
        return {status: count for status, count in self.c.execute(stmt).all()}

    def first_case_id(self, status: Status) -> str | None:
        stmt = sa.select(cases.c.id).where(cases.c.status == status.value).order_by(cases.c.id)
        return self.c.execute(stmt.limit(1)).scalar_one_or_none()

    def all_cases(self) -> Iterator[Case]:
        cursor = self.c.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(self.d.sql["all_cases"])
        while rows := cursor.fetchmany(500):
            yield from map(self.d.read_case, rows)

    # -- writing decisions -------------------------------------------------
    def commit_decisions(self, batch: Iterable[Applied], now: datetime) -> None:
        """Write new state, history, timers and intents of many decisions at once."""
        d = self.d
        at = d.time(now)
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        fired: list[dict[str, Any]] = []
        cancelled: set[str] = set()
        upserts: dict[str, dict[str, datetime]] = {}
        boxes: list[dict[str, Any]] = []
        excs: list[dict[str, Any]] = []
        retried: list[tuple[str, int]] = []
        for item in batch:
            decision = item.decision
            case_id = decision.case.id
            for name in item.fired_timers:
                fired.append({"case_id": case_id, "name": name})
            if not decision.history:
                continue
            (inserts if item.new else updates).append(d.case_params(decision.case))
            self.fresh[case_id] = decision.case
            first_seq = decision.case.seq - len(decision.history) + 1
            for offset, entry in enumerate(decision.history):
                events.append(
                    {
                        "case_id": case_id,
                        "seq": first_seq + offset,
                        "kind": entry.kind,
                        "actor": entry.actor,
                        "at": at if entry.at == now else d.time(entry.at),
                        "reason": entry.reason,
                        "data": dumps(entry.data),
                        "dedupe_key": item.dedupe_key if offset == 0 else None,
                    }
                )
            if decision.cancel_timers:
                # Later decisions of the same case in this batch may set timers again.
                cancelled.add(case_id)
                upserts.pop(case_id, None)
            for timer in decision.timers:
                upserts.setdefault(case_id, {})[timer.name] = timer.due_at
            for intent in decision.intents:
                if isinstance(intent, OpenException):
                    excs.append(
                        {
                            "id": intent.idempotency_key,
                            "case_id": case_id,
                            "reason": intent.reason,
                            "queue": intent.queue,
                            "detail": intent.detail,
                            "opened_at": at,
                            "due_at": d.time(intent.due_at),
                        }
                    )
                    continue
                if isinstance(intent, RetryWriteback):
                    retried.append((intent.idempotency_key, intent.round))
                    continue
                boxes.append(
                    {
                        "case_id": case_id,
                        "kind": "message" if isinstance(intent, SendMessage) else "writeback",
                        "idempotency_key": intent.idempotency_key,
                        "payload": dumps(_intent_payload(intent)),
                        "now": at,
                    }
                )
        timer_rows = [
            {"case_id": c, "name": n, "due_at": d.time(due)}
            for c, named in upserts.items()
            for n, due in named.items()
        ]
        writes = (
            ("insert_case", inserts),
            ("update_case", updates),
            ("insert_event", events),
            ("delete_timer", fired),
            ("delete_case_timers", [{"case_id": c} for c in sorted(cancelled)]),
            ("upsert_timer", timer_rows),
            ("insert_outbox", boxes),
            ("insert_exception", excs),
        )
        for name, rows in writes:
            self._many(name, rows)
        for key, round_ in retried:  # an agent's retry: rare, one row at a time
            self._retry_writeback(key, round_, now)

    def _retry_writeback(self, key: str, round_: int, now: datetime) -> None:
        """Make a failed writeback due again, from its first attempt; the payload keeps which
        retry this is, so its result is a new input to the case (see `feedback_key`)."""
        row = self.c.execute(
            sa.select(outbox.c.id, outbox.c.payload).where(
                outbox.c.idempotency_key == key, outbox.c.status == "failed"
            )
        ).first()
        if row is None:
            return
        self.c.execute(
            outbox.update()
            .where(outbox.c.id == row.id)
            .values(
                status="pending",
                attempts=0,
                next_attempt_at=now,
                leased_until=None,
                created_at=now,  # its deadline runs from the retry
                updated_at=now,
                result=None,
                payload={**row.payload, "retry": round_},
            )
        )

    def _many(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        if len(rows) == 1:
            self.cursor.execute(self.d.sql[name], rows[0])
        elif rows:
            self.cursor.executemany(self.d.sql[name], rows)

    # -- due work ----------------------------------------------------------
    def claim_due_timers(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """Due timers, oldest first; on PostgreSQL rows other workers hold are skipped."""
        rows = self._rows("due_timers", {"now": self.d.time(now), "limit": limit})
        return [(case_id, name) for case_id, name in rows]

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
        """Due, unleased rows of `kind`, oldest first; on PostgreSQL others' rows are skipped."""
        rows = self._rows("claim_outbox", {"kind": kind, "now": self.d.time(now), "limit": limit})
        return [
            OutboxItem(
                id=r[0],
                case_id=r[1],
                kind=r[2],
                idempotency_key=r[3],
                payload=dict(self.d.read_json(r[4])),
                attempts=r[5],
                created_at=self.d.read_time(r[6]),
            )
            for r in rows
        ]

    def lease_outbox(self, ids: Sequence[int], until: datetime) -> None:
        """Hold claimed rows while they are carried out with no transaction open."""
        if ids:
            params = {"ids": self.d.ids(ids), "until": self.d.time(until)}
            self.cursor.execute(self.d.sql["lease_outbox"], params)

    def release_leases(self, now: datetime) -> int:
        """End every lease at once: for a single process resuming after a crash."""
        stmt = outbox.update().where(
            outbox.c.status == "pending", outbox.c.leased_until.is_not(None)
        )
        return self.c.execute(stmt.values(leased_until=None, updated_at=now)).rowcount

    def next_outbox_due(self, kinds: tuple[str, ...] = ("message", "writeback")) -> datetime | None:
        """When the next outbox row of these kinds is due (or its lease ends)."""
        due = [self.c.execute(q.next_unleased, {"kind": k}).scalar_one_or_none() for k in kinds]
        lease = (
            q.next_lease_end
            if len(kinds) == 2
            else q.next_lease_end.where(outbox.c.kind.in_(kinds))
        )
        due.append(self.c.execute(lease).scalar_one_or_none())
        return min((d for d in due if d is not None), default=None)

    def finish_outbox(
        self, finished: Sequence[tuple[int, str, dict[str, Any]]], now: datetime
    ) -> None:
        """Close leased rows: (outbox id, "done" or "failed", result) each."""
        at = self.d.time(now)
        rows = [{"id": i, "status": st, "result": dumps(r), "now": at} for i, st, r in finished]
        self._many("finish_outbox", rows)

    def retry_outbox(
        self, retries: Sequence[tuple[int, datetime, dict[str, Any]]], now: datetime
    ) -> None:
        """Make leased rows due again later: (outbox id, next attempt, result) each."""
        at = self.d.time(now)
        rows = [
            {"id": i, "at": self.d.time(due), "result": dumps(r), "now": at}
            for i, due, r in retries
        ]
        self._many("retry_outbox", rows)

    def log_connector(self, connector: str, event: str, at: datetime, detail: str) -> None:
        self.c.execute(
            connector_log.insert().values(connector=connector, event=event, at=at, detail=detail)
        )

    def connector_events(self) -> dict[str, int]:
        """How many times each connector event happened (`breaker_opened`, ...)."""
        stmt = sa.select(connector_log.c.event, sa.func.count()).group_by(connector_log.c.event)
        return {event: n for event, n in self.c.execute(stmt).all()}

    def writeback_retries(self) -> int:
        """Attempts made for writebacks after their first."""
        extra = sa.case((outbox.c.attempts > 1, outbox.c.attempts - 1), else_=0)
        stmt = sa.select(sa.func.coalesce(sa.func.sum(extra), 0))
        return int(self.c.execute(stmt.where(outbox.c.kind == "writeback")).scalar_one())

    def writebacks(self, case_id: str | None = None) -> list[dict[str, Any]]:
        """Writeback rows (of one case, or all): case, key, operation, status, attempts,
        when made and last changed, and the last result."""
        stmt = (
            sa.select(
                outbox.c.case_id,
                outbox.c.idempotency_key,
                outbox.c.payload,
                outbox.c.status,
                outbox.c.attempts,
                outbox.c.created_at,
                outbox.c.updated_at,
                outbox.c.result,
            )
            .where(outbox.c.kind == "writeback")
            .order_by(outbox.c.id)
        )
        if case_id is not None:
            stmt = stmt.where(outbox.c.case_id == case_id)
        rows = []
        for r in self.c.execute(stmt):
            row = dict(r._mapping)
            payload = row.pop("payload") or {}
            row["operation"] = payload.get("operation", "")
            row["argument"] = payload.get("argument")
            rows.append(row)
        return rows

    def event_counts(self, kinds: Sequence[str]) -> dict[str, int]:
        """How many history entries of each of these kinds there are, over every case."""
        stmt = (
            sa.select(case_events.c.kind, sa.func.count())
            .where(case_events.c.kind.in_(kinds))
            .group_by(case_events.c.kind)
        )
        found: dict[str, int] = {kind: n for kind, n in self.c.execute(stmt).all()}
        return {kind: int(found.get(kind, 0)) for kind in kinds}

    def cases_to_reconcile(
        self, settled_before: datetime, limit: int, since: datetime | None = None
    ) -> list[tuple[str, str]]:
        """Cases (and their accounts) whose writebacks have all finished, one at least done,
        the last before `settled_before` (and at or after `since`), not reconciled yet."""
        status = outbox.c.status
        touched = sa.select(outbox.c.case_id).where(
            outbox.c.kind == "writeback", outbox.c.updated_at < settled_before
        )
        if since is not None:  # the last writeback of a case finishes in exactly one window
            touched = touched.where(outbox.c.updated_at >= since)
        finished = (
            sa.select(outbox.c.case_id)
            .where(outbox.c.kind == "writeback", outbox.c.case_id.in_(touched))
            .group_by(outbox.c.case_id)
            .having(
                sa.func.sum(sa.case((status.not_in(("done", "failed")), 1), else_=0)) == 0,
                sa.func.sum(sa.case((status == "done", 1), else_=0)) > 0,
                sa.func.max(outbox.c.updated_at) < settled_before,
            )
            .subquery()
        )
        reconciled = sa.exists().where(
            case_events.c.case_id == finished.c.case_id, case_events.c.kind == "reconciled"
        )
        stmt = (
            sa.select(finished.c.case_id, cases.c.account_id)
            .join(cases, cases.c.id == finished.c.case_id)
            .where(~reconciled)
            .order_by(finished.c.case_id)
            .limit(limit)
        )
        return [(case_id, account_id) for case_id, account_id in self.c.execute(stmt)]

    def cases_without_work(self, live: Sequence[str]) -> list[str]:
        """Of these cases, those with no timer set and no outbox row still to carry out."""
        waiting = sa.union(
            sa.select(timers.c.case_id),
            sa.select(outbox.c.case_id).where(outbox.c.status.not_in(("done", "failed"))),
        ).subquery()
        idle: list[str] = []
        for start in range(0, len(live), 500):
            chunk = list(live[start : start + 500])
            stmt = sa.select(cases.c.id).where(
                cases.c.id.in_(chunk), cases.c.id.not_in(sa.select(waiting.c.case_id))
            )
            idle += [r[0] for r in self.c.execute(stmt)]
        return sorted(idle)

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

    def defer_outbox(
        self, deferrals: Sequence[tuple[int, datetime, dict[str, Any]]], now: datetime
    ) -> None:
        """Hold leased rows back until a later time; a deferral is not a failed attempt."""
        at = self.d.time(now)
        rows = [
            {"id": i, "at": self.d.time(until), "result": dumps(r), "now": at}
            for i, until, r in deferrals
        ]
        self._many("defer_outbox", rows)

    # -- contact policy ------------------------------------------------------
    def consents_for(self, addresses: Iterable[tuple[str, str]]) -> list[ConsentRecord]:
        """The consent ledger of these (channel, address) pairs, oldest first."""
        pairs = sorted(set(addresses))
        if not pairs:
            return []
        time, rows = self.d.read_time, self._rows("consents_for", self.d.pairs(pairs))
        return [
            ConsentRecord(
                channel=r[0],
                address=r[1],
                granted=bool(r[2]),
                at=_aware(time(r[3])),
                actor=r[4],
                method=r[5],
                source=r[6],
                notice_version=r[7],
                account_id=r[8],
            )
            for r in rows
        ]

    def record_consent(self, record: ConsentRecord) -> None:
        """Append to the consent ledger (it is never updated in place)."""
        self.record_consents([record])

    def record_consents(self, records: Sequence[ConsentRecord]) -> None:
        """Append many records to the consent ledger in one statement."""
        if records:
            self.c.execute(
                consents.insert(),
                [
                    {
                        "channel": r.channel,
                        "address": r.address,
                        "granted": r.granted,
                        "at": r.at,
                        "actor": r.actor,
                        "method": r.method,
                        "source": r.source,
                        "notice_version": r.notice_version,
                        "account_id": r.account_id,
                    }
                    for r in records
                ],
            )

    def sent_since(self, account_ids: Iterable[str], since: datetime) -> dict[str, list[Sent]]:
        """Messages sent to these accounts after `since`, from every workflow."""
        ids = sorted(set(account_ids))
        found: dict[str, list[Sent]] = {a: [] for a in ids}
        if not ids:
            return found
        params = {"ids": self.d.ids(ids), "since": self.d.time(since)}
        for account_id, case_id, channel, priority, sent_at in self._rows("sent_since", params):
            found[account_id].append(
                Sent(
                    at=_aware(self.d.read_time(sent_at)),
                    case_id=case_id,
                    channel=channel,
                    priority=priority,
                )
            )
        return found

    def log_sent(self, rows: Sequence[dict[str, Any]]) -> None:
        """Remember sent messages (account_id, case_id, channel, address, priority, sent_at)."""
        self._many("log_sent", [{**r, "sent_at": self.d.time(r["sent_at"])} for r in rows])

    def waiting_required(self, account_ids: Iterable[str]) -> dict[str, int]:
        """Required notices waiting to go out to each account, from every workflow."""
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        rows = self._rows("waiting_required", {"ids": self.d.ids(ids)})
        return {account: n for account, n in rows}

    def save_unsubscribe(
        self,
        token_hash: str,
        *,
        channel: str,
        address: str,
        account_id: str,
        case_id: str,
        now: datetime,
    ) -> None:
        self.c.execute(
            q.insert_unsubscribe,
            {
                "token_hash": token_hash,
                "channel": channel,
                "address": address,
                "account_id": account_id,
                "case_id": case_id,
                "created_at": now,
            },
        )

    def unsubscribe_target(self, token_hash: str) -> dict[str, Any] | None:
        stmt = sa.select(unsubscribe_tokens).where(unsubscribe_tokens.c.token_hash == token_hash)
        row = self.c.execute(stmt).first()
        return dict(row._mapping) if row else None

    def use_unsubscribe(self, token_hash: str, now: datetime) -> None:
        self.c.execute(
            unsubscribe_tokens.update()
            .where(unsubscribe_tokens.c.token_hash == token_hash)
            .values(used_at=sa.func.coalesce(unsubscribe_tokens.c.used_at, now))
        )

    def sms_usage(self) -> tuple[int, Decimal]:
        """Segments of every SMS sent, and what they cost."""
        segments = outbox.c.result["segments"].as_integer()
        cost = outbox.c.result["cost"].as_string()
        stmt = sa.select(segments, cost).where(
            outbox.c.kind == "message", outbox.c.status == "done", segments.is_not(None)
        )
        total, spent = 0, Decimal(0)
        for count, price in self.c.execute(stmt):
            total += int(count)
            spent += Decimal(price or "0")
        return total, spent

    def contact_decisions(self) -> dict[str, dict[str, int]]:
        """Messages held back by contact policy, by reason: deferred and blocked."""
        code = case_events.c.data["code"].as_string()
        deferred = (
            sa.select(code, sa.func.count())
            .where(case_events.c.kind.in_(("step_deferred", "message_deferred")))
            .group_by(code)
        )
        reason = outbox.c.result["blocked"].as_string()
        blocked = (
            sa.select(reason, sa.func.count())
            .where(outbox.c.kind == "message", outbox.c.status == "failed", reason.is_not(None))
            .group_by(reason)
        )
        return {
            "deferred": {c: n for c, n in self.c.execute(deferred).all() if c},
            "blocked": {r: n for r, n in self.c.execute(blocked).all() if r},
        }

    # -- provider webhooks ----------------------------------------------------
    def track_deliveries(self, rows: Sequence[tuple[str, int]], now: datetime) -> None:
        """Remember which outbox row each provider message id belongs to."""
        if rows:
            self.c.execute(
                delivery_receipts.insert(),
                [
                    {"provider_id": p, "outbox_id": o, "status": "accepted", "updated_at": now}
                    for p, o in rows
                ],
            )

    def delivery_receipt(self, provider_id: str) -> dict[str, Any] | None:
        stmt = sa.select(delivery_receipts).where(delivery_receipts.c.provider_id == provider_id)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        row = self.c.execute(stmt).first()
        return dict(row._mapping) if row else None

    def update_delivery_receipt(
        self, provider_id: str, status: str, error_code: str | None, now: datetime
    ) -> None:
        self.c.execute(
            delivery_receipts.update()
            .where(delivery_receipts.c.provider_id == provider_id)
            .values(status=status, error_code=error_code, updated_at=now)
        )

    def delivery_counts(self) -> dict[str, int]:
        stmt = sa.select(delivery_receipts.c.status, sa.func.count()).group_by(
            delivery_receipts.c.status
        )
        return {status: n for status, n in self.c.execute(stmt).all()}

    def outbox_item(self, item_id: int) -> OutboxItem | None:
        row = self.c.execute(sa.select(outbox).where(outbox.c.id == item_id)).first()
        if row is None:
            return None
        return OutboxItem(
            id=row.id,
            case_id=row.case_id,
            kind=row.kind,
            idempotency_key=row.idempotency_key,
            payload=dict(row.payload),
            attempts=row.attempts,
            created_at=_aware(row.created_at),
        )

    def record_inbound(
        self,
        *,
        provider_id: str,
        channel: str,
        address: str,
        to_address: str,
        body: str,
        keyword: str | None,
        at: datetime,
    ) -> bool:
        """Keep a customer's message; False when this provider id was kept before."""
        stmt = sa.select(inbound_messages.c.id).where(inbound_messages.c.provider_id == provider_id)
        if self.c.execute(stmt).first() is not None:
            return False
        self.c.execute(
            inbound_messages.insert().values(
                provider_id=provider_id,
                channel=channel,
                address=address,
                to_address=to_address,
                body=body,
                keyword=keyword,
                received_at=at,
            )
        )
        return True

    def last_inbound(self, addresses: Iterable[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
        """When each (channel, address) last wrote to us."""
        pairs = sorted(set(addresses))
        if not pairs:
            return {}
        stmt = (
            sa.select(
                inbound_messages.c.channel,
                inbound_messages.c.address,
                sa.func.max(inbound_messages.c.received_at, type_=UTCDateTime),
            )
            .where(sa.tuple_(inbound_messages.c.channel, inbound_messages.c.address).in_(pairs))
            .group_by(inbound_messages.c.channel, inbound_messages.c.address)
        )
        found: dict[tuple[str, str], datetime] = {}
        for channel, address, at in self.c.execute(stmt):
            found[(channel, address)] = at
        return found

    def reject_webhook(self, path: str, remote: str, reason: str, now: datetime) -> None:
        self.c.execute(
            webhook_rejections.insert().values(path=path, remote=remote, reason=reason, at=now)
        )

    def webhook_rejections(self) -> list[dict[str, Any]]:
        stmt = sa.select(webhook_rejections).order_by(webhook_rejections.c.id)
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def consent_counts(self) -> dict[str, int]:
        """Ledger records by kind: granted and withdrawn."""
        stmt = sa.select(consents.c.granted, sa.func.count()).group_by(consents.c.granted)
        return {("granted" if g else "withdrawn"): n for g, n in self.c.execute(stmt).all()}

    # -- exceptions, links, backend events ---------------------------------
    def save_link(
        self, token_hash: str, case_id: str, channel: str, now: datetime, expires_at: datetime
    ) -> None:
        self.c.execute(
            q.insert_link,
            {
                "token_hash": token_hash,
                "case_id": case_id,
                "channel": channel,
                "created_at": now,
                "expires_at": expires_at,
            },
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
            "priority": intent.priority,
        }
    return {
        "operation": intent.operation,
        "argument": intent.argument,
        "outcome": intent.outcome,
        "data": dict(intent.payload),
    }


def _aware(value: datetime | None) -> datetime:
    assert value is not None
    return value
