"""What `closeloop export` reads: each exported table's rows in a time window, in batches.

A mixin of `Tx`. Rows come back as the database holds them; which columns leave
closeloop, and pseudonymised how, is `closeloop.app.export`'s business.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from closeloop.store.tables import (
    case_events,
    cases,
    consents,
    outbox,
    rollout_decisions,
    staff_audit,
)


def _outbox(kind: str) -> sa.Select[Any]:
    return sa.select(
        outbox.c.case_id, outbox.c.idempotency_key, outbox.c.payload, outbox.c.status,
        outbox.c.attempts, outbox.c.created_at, outbox.c.updated_at, outbox.c.result,
    ).where(outbox.c.kind == kind)  # fmt: skip


# Each exported table: its statement and the time column the window applies to.
_SOURCES: dict[str, tuple[sa.Select[Any], sa.ColumnElement[Any]]] = {
    "cases": (
        sa.select(
            cases.c.id.label("case_id"), cases.c.workflow, cases.c.account_id, cases.c.cohort,
            cases.c.status, cases.c.opened_at, cases.c.closed_at,
        ),
        cases.c.opened_at,
    ),
    "events": (
        sa.select(
            case_events.c.case_id, case_events.c.seq, case_events.c.kind, case_events.c.actor,
            case_events.c.at, case_events.c.reason, case_events.c.data,
        ),
        case_events.c.at,
    ),
    "messages": (_outbox("message"), outbox.c.created_at),
    "writebacks": (_outbox("writeback"), outbox.c.created_at),
    "decisions": (
        sa.select(
            rollout_decisions.c.rollout, rollout_decisions.c.at, rollout_decisions.c.action,
            rollout_decisions.c.stage, rollout_decisions.c.actor, rollout_decisions.c.reason,
        ),
        rollout_decisions.c.at,
    ),
}  # fmt: skip
EXPORTED = tuple(_SOURCES)

# What the OCSF export reads: security-relevant rows, each with its time column.
_OCSF_SOURCES: dict[str, tuple[sa.Select[Any], sa.ColumnElement[Any]]] = {
    "staff": (sa.select(staff_audit), staff_audit.c.at),
    "identity": (
        sa.select(
            case_events.c.case_id, case_events.c.seq, case_events.c.kind, case_events.c.actor,
            case_events.c.at, case_events.c.data, cases.c.account_id, cases.c.workflow,
        )
        .join(cases, cases.c.id == case_events.c.case_id)
        .where(case_events.c.kind.in_(("identity_passed", "identity_failed"))),
        case_events.c.at,
    ),
    "consents": (sa.select(consents), consents.c.at),
    "writebacks": (
        _outbox("writeback").where(outbox.c.status.in_(("done", "failed"))),
        outbox.c.updated_at,
    ),
}  # fmt: skip


class ExportQueries:
    c: sa.Connection

    def rows_to_export(
        self, table: str, since: datetime | None, until: datetime | None, batch: int = 5000
    ) -> Iterator[list[dict[str, Any]]]:
        """The rows of `table` (an exported table, or a source of the OCSF export: staff,
        identity, consents, writebacks) whose time falls in [since, until), in batches."""
        stmt, when = _SOURCES[table] if table in _SOURCES else _OCSF_SOURCES[table]
        if since is not None:
            stmt = stmt.where(when >= since)
        if until is not None:
            stmt = stmt.where(when < until)
        result = self.c.execution_options(yield_per=batch).execute(stmt.order_by(when))
        for part in result.mappings().partitions(batch):
            yield [dict(row) for row in part]
