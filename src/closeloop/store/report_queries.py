"""What the consoles' health pages and the report count: the funnel, messages by channel and
result, writebacks' latency. A mixin of `Tx`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from closeloop.store.tables import case_events, cases, outbox, rollouts, workflows

FUNNEL_STEPS = ("message_sent", "link_opened", "identity_passed", "outcome_submitted")


class ReportQueries:
    c: sa.Connection

    def funnel(self) -> dict[str, int]:
        """Cases at each step from trigger to resolution: opened, eligible, enrolled, reached
        (a message went), opened the link, confirmed identity, chose an outcome, resolved."""
        status = cases.c.status

        def total(condition: Any) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        opened, eligible, enrolled, resolved = self.c.execute(
            sa.select(
                sa.func.count(),
                total(status != "ineligible"),
                total(status.not_in(("ineligible", "not_enrolled"))),
                total(status == "resolved"),
            )
        ).one()
        reached: dict[str, int] = dict(
            self.c.execute(
                sa.select(case_events.c.kind, sa.func.count(sa.distinct(case_events.c.case_id)))
                .where(case_events.c.kind.in_(FUNNEL_STEPS))
                .group_by(case_events.c.kind)
            ).all()
        )
        return {
            "triggered": int(opened),
            "eligible": int(eligible),
            "enrolled": int(enrolled),
            **{kind: int(reached.get(kind, 0)) for kind in FUNNEL_STEPS},
            "resolved": int(resolved),
        }

    def messages_by_result(self) -> dict[str, dict[str, int]]:
        """Messages by channel and outbox status (done, failed, pending)."""
        channel = outbox.c.payload["channel"].as_string()
        stmt = (
            sa.select(channel, outbox.c.status, sa.func.count())
            .where(outbox.c.kind == "message")
            .group_by(channel, outbox.c.status)
        )
        out: dict[str, dict[str, int]] = {}
        for ch, status, n in self.c.execute(stmt):
            out.setdefault(ch or "?", {})[status] = int(n)
        return out

    def writeback_latency(self) -> dict[str, float | None]:
        """Seconds from a writeback's request to its success, retries and waits included: mean
        and the slowest. (The core's own answer times are `closeloop_writeback_seconds`.)"""
        if self.c.dialect.name == "sqlite":
            seconds = (
                sa.func.julianday(outbox.c.updated_at) - sa.func.julianday(outbox.c.created_at)
            ) * 86400.0
        else:
            seconds = sa.extract("epoch", outbox.c.updated_at - outbox.c.created_at)
        call = outbox.c.result["seconds"].as_float()  # the core's answer to the last call
        mean, most, answer, slowest = self.c.execute(
            sa.select(
                sa.func.avg(seconds), sa.func.max(seconds), sa.func.avg(call), sa.func.max(call)
            ).where(outbox.c.kind == "writeback", outbox.c.status == "done")
        ).one()

        def rounded(value: Any) -> float | None:
            return None if value is None else round(float(value), 3)

        return {
            "mean_seconds": rounded(mean),
            "max_seconds": rounded(most),
            "call_mean_seconds": rounded(answer),
            "call_max_seconds": rounded(slowest),
        }

    def all_rollouts(self) -> list[dict[str, Any]]:
        stmt = sa.select(rollouts).order_by(rollouts.c.updated_at.desc(), rollouts.c.name)
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def workflow_versions(self) -> list[dict[str, Any]]:
        """Every registered workflow version, with how many cases each has opened and how
        many of those are still live."""
        live = sa.func.sum(sa.case((cases.c.closed_at.is_(None), 1), else_=0))
        counted = (
            sa.select(cases.c.workflow, sa.func.count().label("cases"), live.label("live"))
            .group_by(cases.c.workflow)
            .subquery()
        )
        stmt = (
            sa.select(
                workflows.c.key,
                workflows.c.workflow,
                workflows.c.version,
                workflows.c.loaded_at,
                sa.func.coalesce(counted.c.cases, 0).label("cases"),
                sa.func.coalesce(counted.c.live, 0).label("live"),
            )
            .outerjoin(counted, counted.c.workflow == workflows.c.key)
            .order_by(workflows.c.workflow, workflows.c.version.desc())
        )
        return [dict(r._mapping) for r in self.c.execute(stmt)]
