"""The per-step statements, run on the database driver's own cursor.

Every case step loads a case and writes its row, its history, its timers and
its intents. Through SQLAlchemy each execution also pays for a cache lookup,
an execution context, bind and result processors per value; together that
cost more than SQLite itself. So these few statements are written once per
dialect here and run on the driver's cursor inside the transaction
SQLAlchemy opened. Everything else (and the schema, in `tables.py` and the
Alembic migrations) stays SQLAlchemy's.

Values are encoded the way SQLAlchemy stores them, so rows written here and
rows written through SQLAlchemy are the same: on SQLite, times are naive UTC
text (``YYYY-MM-DD HH:MM:SS.ffffff``) and JSON is text; on PostgreSQL, times
are ``timestamptz`` and JSON is ``jsonb``.
"""

# The statements interpolate only this module's own constants (column lists, statuses).
# ruff: noqa: S608

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import orjson

from closeloop.engine import Case, Contact, Status

CASE_COLUMNS = (
    "id, workflow, trigger_id, account_id, status, cohort, opened_at, updated_at, "
    "closed_at, seq, state"
)
_STATE_FIELDS = (
    "data",
    "account",
    "time_zone",
    "next_step",
    "link_opened",
    "verified",
    "identity_level",
    "identity_failures",
    "code_failures",
    "outcome",
    "submission",
    "touches",
    "agent_touched",
    "reason",
)
_state_of = attrgetter(*_STATE_FIELDS)
_JSON_PARAMS = frozenset({"state", "data", "payload", "result"})
_OUTBOX_COLUMNS = "id, case_id, kind, idempotency_key, payload, attempts, created_at"
_CONSENT_COLUMNS = (
    "channel, address, granted, at, actor, method, source, notice_version, account_id"
)
_OUTBOX_DUE = (
    "kind = :kind AND status = 'pending' AND next_attempt_at <= :now "
    "AND (leased_until IS NULL OR leased_until <= :now)"
)

_LIVE = ", ".join(f"'{s.value}'" for s in Status if not s.terminal)
_SQLITE = {
    "case_with_seen": f"""
        SELECT {CASE_COLUMNS}, EXISTS (
            SELECT 1 FROM case_events WHERE case_id = cases.id AND dedupe_key = :key
        ) FROM cases WHERE id = :case_id""",
    "cases_by_ids": f"""
        SELECT {CASE_COLUMNS} FROM cases WHERE id IN (SELECT value FROM json_each(:ids))""",
    "cases_by_triggers": f"""
        SELECT {CASE_COLUMNS} FROM cases
        WHERE trigger_id IN (SELECT value FROM json_each(:ids))""",
    "due_timers": """
        SELECT case_id, name FROM timers WHERE due_at <= :now ORDER BY due_at LIMIT :limit""",
    "open_cases_for_account": f"""
        SELECT {CASE_COLUMNS} FROM cases WHERE account_id = :account_id AND status IN ({_LIVE})
        ORDER BY opened_at""",
    "control_cases_for_account": f"""
        SELECT {CASE_COLUMNS} FROM cases WHERE account_id = :account_id
        AND status = 'not_enrolled' AND opened_at >= :since ORDER BY opened_at""",
    "seen_keys": """
        SELECT case_id, dedupe_key FROM case_events WHERE (case_id, dedupe_key) IN (
            SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
            FROM json_each(:pairs))""",
    "claim_outbox": f"""
        SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE {_OUTBOX_DUE} ORDER BY id LIMIT :limit""",
    "consents_for": f"""
        SELECT {_CONSENT_COLUMNS} FROM consents WHERE (channel, address) IN (
            SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
            FROM json_each(:pairs))
        ORDER BY at, id""",
    "sent_since": """
        SELECT account_id, case_id, channel, priority, sent_at FROM contact_log
        WHERE account_id IN (SELECT value FROM json_each(:ids)) AND sent_at > :since""",
    "waiting_required": """
        SELECT cases.account_id, count(*) FROM outbox JOIN cases ON outbox.case_id = cases.id
        WHERE outbox.kind = 'message' AND outbox.status = 'pending'
        AND json_extract(outbox.payload, '$.priority') = 'required'
        AND cases.account_id IN (SELECT value FROM json_each(:ids))
        GROUP BY cases.account_id""",
    "lease_outbox": """
        UPDATE outbox SET leased_until = :until WHERE id IN (SELECT value FROM json_each(:ids))""",
}
_POSTGRESQL = {
    "case_with_seen": f"""
        SELECT {CASE_COLUMNS}, EXISTS (
            SELECT 1 FROM case_events WHERE case_id = cases.id AND dedupe_key = :key
        ) FROM cases WHERE id = :case_id FOR UPDATE OF cases""",
    "cases_by_ids": f"SELECT {CASE_COLUMNS} FROM cases WHERE id = ANY(:ids) ORDER BY id FOR UPDATE",
    "cases_by_triggers": f"SELECT {CASE_COLUMNS} FROM cases WHERE trigger_id = ANY(:ids)",
    "due_timers": """
        SELECT case_id, name FROM timers WHERE due_at <= :now ORDER BY due_at LIMIT :limit
        FOR UPDATE SKIP LOCKED""",
    "open_cases_for_account": f"""
        SELECT {CASE_COLUMNS} FROM cases WHERE account_id = :account_id AND status IN ({_LIVE})
        ORDER BY opened_at FOR UPDATE""",
    "control_cases_for_account": f"""
        SELECT {CASE_COLUMNS} FROM cases WHERE account_id = :account_id
        AND status = 'not_enrolled' AND opened_at >= :since ORDER BY opened_at FOR UPDATE""",
    "seen_keys": """
        SELECT case_id, dedupe_key FROM case_events WHERE (case_id, dedupe_key) IN (
            SELECT * FROM unnest(CAST(:cases AS text[]), CAST(:keys AS text[])))""",
    "claim_outbox": f"""
        SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE {_OUTBOX_DUE} ORDER BY id LIMIT :limit
        FOR UPDATE SKIP LOCKED""",
    "lease_outbox": "UPDATE outbox SET leased_until = :until WHERE id = ANY(:ids)",
    "consents_for": f"""
        SELECT {_CONSENT_COLUMNS} FROM consents WHERE (channel, address) IN (
            SELECT * FROM unnest(CAST(:cases AS text[]), CAST(:keys AS text[])))
        ORDER BY at, id""",
    "sent_since": """
        SELECT account_id, case_id, channel, priority, sent_at FROM contact_log
        WHERE account_id = ANY(:ids) AND sent_at > :since""",
    "waiting_required": """
        SELECT cases.account_id, count(*) FROM outbox JOIN cases ON outbox.case_id = cases.id
        WHERE outbox.kind = 'message' AND outbox.status = 'pending'
        AND outbox.payload ->> 'priority' = 'required' AND cases.account_id = ANY(:ids)
        GROUP BY cases.account_id""",
}
_COMMON = {
    "case_by_id": f"SELECT {CASE_COLUMNS} FROM cases WHERE id = :case_id",
    "all_cases": f"SELECT {CASE_COLUMNS} FROM cases ORDER BY id",
    "insert_case": f"""
        INSERT INTO cases ({CASE_COLUMNS}) VALUES (:id, :workflow, :trigger_id, :account_id,
        :status, :cohort, :opened_at, :updated_at, :closed_at, :seq, :state)""",
    "update_case": """
        UPDATE cases SET status = :status, cohort = :cohort, updated_at = :updated_at,
        closed_at = :closed_at, seq = :seq, state = :state WHERE id = :id""",
    "insert_event": """
        INSERT INTO case_events (case_id, seq, kind, actor, at, reason, data, dedupe_key)
        VALUES (:case_id, :seq, :kind, :actor, :at, :reason, :data, :dedupe_key)""",
    "delete_timer": "DELETE FROM timers WHERE case_id = :case_id AND name = :name",
    "delete_case_timers": "DELETE FROM timers WHERE case_id = :case_id",
    "upsert_timer": """
        INSERT INTO timers (case_id, name, due_at) VALUES (:case_id, :name, :due_at)
        ON CONFLICT (case_id, name) DO UPDATE SET due_at = excluded.due_at""",
    "insert_outbox": """
        INSERT INTO outbox (case_id, kind, idempotency_key, payload, status, attempts,
        next_attempt_at, leased_until, created_at, updated_at, result)
        VALUES (:case_id, :kind, :idempotency_key, :payload, 'pending', 0, :now, NULL,
        :now, :now, NULL)""",
    "defer_outbox": """
        UPDATE outbox SET next_attempt_at = :at, result = :result, updated_at = :now,
        leased_until = NULL WHERE id = :id""",
    "log_sent": """
        INSERT INTO contact_log (account_id, case_id, channel, address, priority, sent_at)
        VALUES (:account_id, :case_id, :channel, :address, :priority, :sent_at)""",
    "finish_outbox": """
        UPDATE outbox SET status = :status, result = :result, attempts = attempts + 1,
        updated_at = :now, leased_until = NULL WHERE id = :id""",
    "retry_outbox": """
        UPDATE outbox SET next_attempt_at = :at, result = :result, attempts = attempts + 1,
        updated_at = :now, leased_until = NULL WHERE id = :id""",
    "insert_exception": """
        INSERT INTO exceptions (id, case_id, reason, queue, detail, opened_at, due_at, status)
        VALUES (:id, :case_id, :reason, :queue, :detail, :opened_at, :due_at, 'open')""",
}


def _to_pyformat(sql: str) -> str:
    """``:name`` to psycopg's ``%(name)s``, casting JSON parameters to jsonb."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"CAST(%({name})s AS jsonb)" if name in _JSON_PARAMS else f"%({name})s"

    return re.sub(r"(?<![:\w]):(\w+)", one, sql)


@dataclass(frozen=True)
class Dialect:
    """Statements and value encodings of one database."""

    name: str
    sql: Mapping[str, str]

    @classmethod
    def of(cls, name: str) -> Dialect:
        if name == "postgresql":
            statements = {k: _to_pyformat(v) for k, v in {**_POSTGRESQL, **_COMMON}.items()}
            return cls(name, statements)
        if name == "sqlite":
            return cls(name, {**_SQLITE, **_COMMON})
        raise ValueError(f"no driver statements for {name}")

    # -- values ------------------------------------------------------------
    def time(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            if value.tzinfo is None:
                raise ValueError("closeloop stores only timezone-aware times")
            value = value.astimezone(UTC)
        if self.name != "sqlite":
            return value
        text = _TEXT_OF.get(value)
        if text is None:
            text = value.replace(tzinfo=None).isoformat(" ", "microseconds")
            _remember(_TEXT_OF, value, text)
        return text

    def read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            time = _TIME_OF.get(value)
            if time is None:
                time = datetime.fromisoformat(value).replace(tzinfo=UTC)
                _remember(_TIME_OF, value, time)
            return time
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def ids(self, values: Sequence[Any]) -> Any:
        return dumps(list(values)) if self.name == "sqlite" else list(values)

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
        if self.name == "sqlite":
            return {"pairs": dumps(pairs)}
        return {"cases": [a for a, _ in pairs], "keys": [b for _, b in pairs]}

    def read_json(self, value: Any) -> Any:
        return orjson.loads(value) if isinstance(value, str) else value

    # -- cases -------------------------------------------------------------
    def case_params(self, case: Case) -> dict[str, Any]:
        state: dict[str, Any] = dict(zip(_STATE_FIELDS, _state_of(case), strict=True))
        state["contacts"] = [
            {"channel": c.channel, "address": c.address, "consent": c.consent}
            if c.notice is None
            else {
                "channel": c.channel,
                "address": c.address,
                "consent": c.consent,
                "notice": c.notice,
            }
            for c in case.contacts
        ]
        state["pending_writebacks"] = case.pending_writebacks
        return {
            "id": case.id,
            "workflow": case.workflow,
            "trigger_id": case.trigger_id,
            "account_id": case.account_id,
            "status": case.status.value,
            "cohort": case.cohort,
            "opened_at": self.time(case.opened_at),
            "updated_at": self.time(case.updated_at),
            "closed_at": self.time(case.closed_at),
            "seq": case.seq,
            "state": dumps(state),
        }

    def read_case(self, row: Sequence[Any]) -> Case:
        """A case from a row whose first columns are `CASE_COLUMNS`."""
        state = dict(self.read_json(row[10]))
        state["contacts"] = tuple(Contact(**c) for c in state.get("contacts", ()))
        state["pending_writebacks"] = tuple(state.get("pending_writebacks", ()))
        return Case.restore(
            state,
            id=row[0],
            workflow=row[1],
            trigger_id=row[2],
            account_id=row[3],
            status=Status(row[4]),
            cohort=row[5],
            opened_at=self.read_time(row[6]),
            updated_at=self.read_time(row[7]),
            closed_at=self.read_time(row[8]),
            seq=row[9],
        )


# Case steps write and read the same few instants over and over (the clock's
# now, a batch's due time), so SQLite's time text is remembered both ways.
_TEXT_OF: dict[datetime, str] = {}
_TIME_OF: dict[str, datetime] = {}
_TIMES_KEPT = 4096


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= _TIMES_KEPT:
        memo.clear()
    memo[key] = value


def dumps(value: Any) -> str:
    """JSON text of `value` (tuples and mappings as arrays and objects)."""
    return orjson.dumps(value, default=_plain).decode()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
