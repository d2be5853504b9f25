"""What staff sign-in keeps: users, their sessions, API tokens, the audit of access; and the
exception queue agents work (claims and closes).

A mixin of `Tx`, like the rollout controller's statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from closeloop.store.tables import (
    api_tokens,
    delivery_receipts,
    documents,
    exceptions,
    outbox,
    staff_audit,
    staff_sessions,
    staff_users,
)


class StaffQueries:
    c: sa.Connection

    # -- users ---------------------------------------------------------------
    def save_user(self, row: dict[str, Any]) -> None:
        self.c.execute(staff_users.insert(), row)

    def user(self, username: str) -> dict[str, Any] | None:
        stmt = sa.select(staff_users).where(staff_users.c.username == username)
        row = self.c.execute(stmt).first()
        return dict(row._mapping) if row else None

    def users(self) -> list[dict[str, Any]]:
        stmt = sa.select(staff_users).order_by(staff_users.c.username)
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def update_user(self, username: str, **values: Any) -> bool:
        stmt = staff_users.update().where(staff_users.c.username == username).values(**values)
        return self.c.execute(stmt).rowcount == 1

    def count_failed_sign_in(self, username: str) -> int:
        """One more wrong password, counted in the database (two at once both count)."""
        stmt = (
            staff_users.update()
            .where(staff_users.c.username == username)
            .values(failed_sign_ins=staff_users.c.failed_sign_ins + 1)
            .returning(staff_users.c.failed_sign_ins)
        )
        return int(self.c.execute(stmt).scalar_one())

    # -- sessions ------------------------------------------------------------
    def save_staff_session(self, row: dict[str, Any]) -> None:
        self.c.execute(staff_sessions.insert(), row)

    def staff_session(self, id_hash: str) -> dict[str, Any] | None:
        stmt = (
            sa.select(
                staff_sessions, staff_users.c.role, staff_users.c.name, staff_users.c.disabled_at
            )
            .join(staff_users, staff_users.c.username == staff_sessions.c.username)
            .where(staff_sessions.c.id_hash == id_hash)
        )
        row = self.c.execute(stmt).first()
        return dict(row._mapping) if row else None

    def touch_staff_session(self, id_hash: str, now: datetime) -> None:
        stmt = staff_sessions.update().where(staff_sessions.c.id_hash == id_hash)
        self.c.execute(stmt.values(seen_at=now))

    def end_staff_sessions(self, now: datetime, *, id_hash: str = "", username: str = "") -> int:
        stmt = staff_sessions.update().where(staff_sessions.c.ended_at.is_(None))
        if id_hash:
            stmt = stmt.where(staff_sessions.c.id_hash == id_hash)
        if username:
            stmt = stmt.where(staff_sessions.c.username == username)
        return int(self.c.execute(stmt.values(ended_at=now)).rowcount)

    # -- API tokens ----------------------------------------------------------
    def save_token(self, row: dict[str, Any]) -> None:
        self.c.execute(api_tokens.insert(), row)

    def api_token(self, token_id: str) -> dict[str, Any] | None:
        row = self.c.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
        return dict(row._mapping) if row else None

    def api_tokens(self) -> list[dict[str, Any]]:
        stmt = sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id)
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def update_token(self, token_id: str, **values: Any) -> bool:
        stmt = api_tokens.update().where(api_tokens.c.id == token_id).values(**values)
        return self.c.execute(stmt).rowcount == 1

    # -- audit ---------------------------------------------------------------
    def audit(self, row: dict[str, Any]) -> None:
        self.c.execute(staff_audit.insert(), row)

    def audit_between(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        stmt = (
            sa.select(staff_audit)
            .where(staff_audit.c.at >= since, staff_audit.c.at < until)
            .order_by(staff_audit.c.id)
        )
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    # -- the exception queue ---------------------------------------------------
    def open_exceptions(self, queue: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        stmt = sa.select(exceptions).where(exceptions.c.status == "open")
        if queue:
            stmt = stmt.where(exceptions.c.queue == queue)
        stmt = stmt.order_by(exceptions.c.due_at, exceptions.c.id).limit(limit)
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def open_queues(self) -> list[str]:
        stmt = sa.select(sa.distinct(exceptions.c.queue)).where(exceptions.c.status == "open")
        return sorted(self.c.execute(stmt).scalars())

    def exception(self, exception_id: str) -> dict[str, Any] | None:
        row = self.c.execute(sa.select(exceptions).where(exceptions.c.id == exception_id)).first()
        return dict(row._mapping) if row else None

    def case_exceptions(self, case_id: str) -> list[dict[str, Any]]:
        stmt = (
            sa.select(exceptions)
            .where(exceptions.c.case_id == case_id)
            .order_by(exceptions.c.opened_at, exceptions.c.id)
        )
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def claim_exception(self, exception_id: str, agent: str, now: datetime) -> bool:
        """Claim an open exception nobody holds (or the agent holds already)."""
        stmt = (
            exceptions.update()
            .where(
                exceptions.c.id == exception_id,
                exceptions.c.status == "open",
                sa.or_(exceptions.c.claimed_by.is_(None), exceptions.c.claimed_by == agent),
            )
            .values(claimed_by=agent, claimed_at=now)
        )
        return self.c.execute(stmt).rowcount == 1

    def release_exception(self, exception_id: str, agent: str | None) -> bool:
        """Let go of a claim: the agent's own, or anyone's when `agent` is None (an admin)."""
        stmt = exceptions.update().where(
            exceptions.c.id == exception_id,
            exceptions.c.status == "open",
            exceptions.c.claimed_by.is_not(None),
        )
        if agent is not None:
            stmt = stmt.where(exceptions.c.claimed_by == agent)
        return self.c.execute(stmt.values(claimed_by=None, claimed_at=None)).rowcount == 1

    def close_exception(self, exception_id: str, agent: str, action: str, now: datetime) -> bool:
        stmt = (
            exceptions.update()
            .where(
                exceptions.c.id == exception_id,
                exceptions.c.status == "open",
                exceptions.c.claimed_by == agent,
            )
            .values(status="closed", closed_by=agent, closed_at=now, action=action)
        )
        return self.c.execute(stmt).rowcount == 1

    def case_messages(self, case_id: str) -> list[dict[str, Any]]:
        """A case's messages: channel, step, status, when, and the provider's delivery status."""
        stmt = (
            sa.select(
                outbox.c.id,
                outbox.c.payload,
                outbox.c.status,
                outbox.c.created_at,
                outbox.c.updated_at,
                outbox.c.result,
                delivery_receipts.c.status.label("delivery"),
            )
            .outerjoin(delivery_receipts, delivery_receipts.c.outbox_id == outbox.c.id)
            .where(outbox.c.case_id == case_id, outbox.c.kind == "message")
            .order_by(outbox.c.id)
        )
        return [dict(r._mapping) for r in self.c.execute(stmt)]

    def case_documents(self, case_id: str) -> list[dict[str, Any]]:
        stmt = sa.select(documents).where(documents.c.case_id == case_id)
        return [dict(r._mapping) for r in self.c.execute(stmt.order_by(documents.c.stored_at))]
