"""What the rollout controller keeps and reads: rollouts, their decisions, a stage's tallies.

A mixin of `Tx` (the transaction every store method runs in), kept apart from
the engine's case, timer and outbox statements.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from closeloop.store.tables import (
    UTCDateTime,
    case_events,
    cases,
    outbox,
    rollout_decisions,
    rollouts,
)


class RolloutQueries:
    c: sa.Connection

    def save_rollout(self, row: dict[str, Any]) -> None:
        self.c.execute(rollouts.insert(), row)

    def rollout(self, name: str) -> dict[str, Any] | None:
        row = self.c.execute(sa.select(rollouts).where(rollouts.c.name == name)).first()
        return dict(row._mapping) if row else None

    def live_rollout(self, workflow: str) -> dict[str, Any] | None:
        """The workflow's rollout that is not completed, if there is one."""
        stmt = sa.select(rollouts).where(
            rollouts.c.workflow == workflow, rollouts.c.state != "completed"
        )
        row = self.c.execute(stmt).first()
        return dict(row._mapping) if row else None

    def live_rollouts(self) -> list[dict[str, Any]]:
        stmt = sa.select(rollouts).where(rollouts.c.state != "completed").order_by(rollouts.c.name)
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def update_rollout(self, name: str, **values: Any) -> None:
        self.c.execute(rollouts.update().where(rollouts.c.name == name).values(**values))

    def record_rollout_decision(self, row: dict[str, Any]) -> None:
        self.c.execute(rollout_decisions.insert(), row)

    def rollout_decisions(self, name: str) -> list[dict[str, Any]]:
        stmt = (
            sa.select(rollout_decisions)
            .where(rollout_decisions.c.rollout == name)
            .order_by(rollout_decisions.c.id)
        )
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def opened_between(self, workflow: str) -> tuple[datetime | None, datetime | None]:
        """When the workflow's first and last cases were opened."""
        stmt = sa.select(sa.func.min(cases.c.opened_at), sa.func.max(cases.c.opened_at)).where(
            cases.c.workflow.like(f"{workflow}@%")
        )
        first, last = self.c.execute(stmt).one()
        return first, last

    def rollout_tallies(
        self, workflow: str, since: datetime, until: datetime
    ) -> dict[str, dict[str, int]]:
        """What the workflow's eligible cases opened in [since, until) did, by cohort."""
        opened = sa.and_(
            cases.c.workflow.like(f"{workflow}@%"),
            cases.c.opened_at >= since,
            cases.c.opened_at < until,
            cases.c.status != "ineligible",
        )
        control_resolved = sa.exists().where(
            case_events.c.case_id == cases.c.id,
            case_events.c.kind == "resolved_outside_rollout",
        )
        status = cases.c.status

        def total(condition: Any) -> Any:
            return sa.func.sum(sa.case((condition, 1), else_=0))

        tallies: dict[str, dict[str, int]] = {}
        by_cohort = (
            sa.select(
                cases.c.cohort,
                sa.func.count(),
                total(status == "resolved"),
                total(status.in_(("resolved", "resolved_elsewhere")) | control_resolved),
                total(status == "exception"),
                total(status == "opted_out"),
            )
            .where(opened)
            .group_by(cases.c.cohort)
        )
        for cohort, n, completed, resolved, exceptions, opt_outs in self.c.execute(by_cohort):
            tallies[cohort] = {
                "cases": n, "completed": completed or 0, "resolved": resolved or 0,
                "exceptions": exceptions or 0, "opt_outs": opt_outs or 0,
            }  # fmt: skip
        written = (
            sa.select(cases.c.cohort, sa.func.count(), total(outbox.c.status == "done"))
            .select_from(outbox.join(cases, outbox.c.case_id == cases.c.id))
            .where(opened, outbox.c.kind == "writeback", outbox.c.status.in_(("done", "failed")))
            .group_by(cases.c.cohort)
        )
        for cohort, n, ok in self.c.execute(written):
            tallies.setdefault(cohort, {}).update(writebacks=n, writebacks_ok=ok or 0)
        checked = (
            sa.select(
                cases.c.cohort, sa.func.count(), total(case_events.c.kind == "identity_failed")
            )
            .select_from(case_events.join(cases, case_events.c.case_id == cases.c.id))
            .where(opened, case_events.c.kind.in_(("identity_passed", "identity_failed")))
            .group_by(cases.c.cohort)
        )
        for cohort, n, failed in self.c.execute(checked):
            tallies.setdefault(cohort, {}).update(identity_checks=n, identity_failures=failed or 0)
        doubled = (  # found by reconciliation with the system of record
            sa.select(cases.c.cohort, sa.func.count(sa.distinct(cases.c.id)))
            .select_from(case_events.join(cases, case_events.c.case_id == cases.c.id))
            .where(opened, case_events.c.kind == "writeback_duplicated")
            .group_by(cases.c.cohort)
        )
        for cohort, n in self.c.execute(doubled):
            tallies.setdefault(cohort, {}).update(duplicate_writebacks=n)
        return tallies

    def _hours(self, end: Any, start: Any) -> Any:
        """Hours from `start` to `end`, in the database (both are UTC times)."""
        if self.c.dialect.name == "sqlite":
            return (sa.func.julianday(end) - sa.func.julianday(start)) * 24.0
        return sa.extract("epoch", end - start) / 3600.0

    def resolution_times(
        self, workflow: str, since: datetime, now: datetime, follow_up: timedelta
    ) -> list[tuple[str, float, bool, int]]:
        """Time to resolution of the eligible cases opened in [since, now], grouped in the
        database: (cohort, hours to the hundredth, resolved, cases). An enrolled case runs
        to its close (resolved or resolved elsewhere ends it; any other close, or none yet,
        censors it); a case left out runs to its resolution elsewhere, or is censored after
        `follow_up` (or now)."""
        at_now = sa.literal(now, UTCDateTime())
        opened = cases.c.opened_at
        outside_at = (
            sa.select(sa.func.min(case_events.c.at))
            .where(
                case_events.c.case_id == cases.c.id,
                case_events.c.kind == "resolved_outside_rollout",
            )
            .scalar_subquery()
        )
        age = self._hours(at_now, opened)
        watched = follow_up.total_seconds() / 3600
        control = cases.c.cohort == "control"
        hours = sa.case(
            (control & outside_at.is_not(None), self._hours(outside_at, opened)),
            (control & (age < watched), age),
            (control, sa.literal(watched)),
            else_=self._hours(sa.func.coalesce(cases.c.closed_at, at_now), opened),
        )
        done = sa.case(
            (control, outside_at.is_not(None)),
            else_=cases.c.status.in_(("resolved", "resolved_elsewhere")),
        )
        rounded = sa.func.round(sa.cast(hours, sa.Numeric), 2)
        stmt = (
            sa.select(cases.c.cohort, rounded, done, sa.func.count())
            .where(
                cases.c.workflow.like(f"{workflow}@%"),
                opened >= since,
                opened <= now,
                cases.c.status != "ineligible",
                cases.c.cohort != "outside",
            )
            .group_by(cases.c.cohort, rounded, done)
        )
        return [
            (cohort, max(0.0, float(h)), bool(d), int(n))
            for cohort, h, d, n in self.c.execute(stmt)
        ]

    def rollout_started_at(self, name: str) -> datetime | None:
        stmt = sa.select(sa.func.min(rollout_decisions.c.at)).where(
            rollout_decisions.c.rollout == name
        )
        return self.c.execute(stmt).scalar_one_or_none()

    def duplicated_cases(self, workflow: str, since: datetime) -> int:
        """Enrolled cases opened since then in which reconciliation found a duplicate."""
        stmt = (
            sa.select(sa.func.count(sa.distinct(cases.c.id)))
            .select_from(case_events.join(cases, case_events.c.case_id == cases.c.id))
            .where(
                cases.c.workflow.like(f"{workflow}@%"),
                cases.c.opened_at >= since,
                cases.c.cohort.not_in(("control", "outside")),
                case_events.c.kind == "writeback_duplicated",
            )
        )
        return int(self.c.execute(stmt).scalar_one())

    def daily_outcomes(
        self, workflow: str, since: datetime, until: datetime
    ) -> list[tuple[str, str, int, int, int]]:
        """(day opened, cohort, cases, completed in the message, resolved) of the workflow's
        eligible cases opened in [since, until), day by day (UTC)."""
        day = sa.func.date(cases.c.opened_at)
        if self.c.dialect.name == "postgresql":
            day = sa.func.to_char(sa.func.timezone("UTC", cases.c.opened_at), "YYYY-MM-DD")
        control_resolved = sa.exists().where(
            case_events.c.case_id == cases.c.id,
            case_events.c.kind == "resolved_outside_rollout",
        )
        status = cases.c.status
        resolved = status.in_(("resolved", "resolved_elsewhere")) | control_resolved
        stmt = (
            sa.select(
                day.label("day"),
                cases.c.cohort,
                sa.func.count(),
                sa.func.sum(sa.case((status == "resolved", 1), else_=0)),
                sa.func.sum(sa.case((resolved, 1), else_=0)),
            )
            .where(
                cases.c.workflow.like(f"{workflow}@%"),
                cases.c.opened_at >= since,
                cases.c.opened_at < until,
                status != "ineligible",
            )
            .group_by(sa.literal_column("day"), cases.c.cohort)
            .order_by(sa.literal_column("day"), cases.c.cohort)
        )
        return [(str(d), c, n, int(k or 0), int(r or 0)) for d, c, n, k, r in self.c.execute(stmt)]
