"""What a customer's visit keeps: mini-app sessions, uploaded documents, one-time codes.

A mixin of `Tx`, like the rollout controller's and the staff's statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from closeloop.store.tables import documents, miniapp_sessions, one_time_codes

# Read on every mini-app request: built once.
_session_by_hash = sa.select(miniapp_sessions).where(
    miniapp_sessions.c.id_hash == sa.bindparam("id_hash")
)


class VisitQueries:
    c: sa.Connection

    # -- mini-app sessions ---------------------------------------------------
    def save_session(self, row: dict[str, Any]) -> None:
        self.c.execute(miniapp_sessions.insert(), row)

    def session(self, id_hash: str) -> dict[str, Any] | None:
        row = self.c.execute(_session_by_hash, {"id_hash": id_hash}).first()
        return dict(row._mapping) if row else None

    def touch_session(self, id_hash: str, now: datetime) -> None:
        self.c.execute(
            miniapp_sessions.update()
            .where(miniapp_sessions.c.id_hash == id_hash)
            .values(seen_at=now)
        )

    def end_session(self, id_hash: str, now: datetime) -> bool:
        """End a session; False if it had ended already."""
        result = self.c.execute(
            miniapp_sessions.update()
            .where(miniapp_sessions.c.id_hash == id_hash, miniapp_sessions.c.ended_at.is_(None))
            .values(ended_at=now)
        )
        return result.rowcount == 1

    # -- documents -----------------------------------------------------------
    def save_document(self, row: dict[str, Any]) -> None:
        self.c.execute(documents.insert(), row)

    def document(self, document_id: str) -> dict[str, Any] | None:
        row = self.c.execute(sa.select(documents).where(documents.c.id == document_id)).first()
        return dict(row._mapping) if row else None

    # -- one-time codes ------------------------------------------------------
    def save_code(self, row: dict[str, Any]) -> None:
        self.c.execute(one_time_codes.insert(), row)

    def codes_sent_since(self, case_id: str, since: datetime) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(one_time_codes)
            .where(one_time_codes.c.case_id == case_id, one_time_codes.c.created_at > since)
        )
        return int(self.c.execute(stmt).scalar_one())

    def live_code(self, case_id: str, now: datetime) -> dict[str, Any] | None:
        """The newest code of the case that is unused and unexpired."""
        stmt = (
            sa.select(one_time_codes)
            .where(
                one_time_codes.c.case_id == case_id,
                one_time_codes.c.used_at.is_(None),
                one_time_codes.c.expires_at > now,
            )
            .order_by(one_time_codes.c.created_at.desc(), one_time_codes.c.id.desc())
            .limit(1)
        )
        row = self.c.execute(stmt).first()
        return dict(row._mapping) if row else None

    def use_code(self, code_id: int, now: datetime) -> bool:
        result = self.c.execute(
            one_time_codes.update()
            .where(one_time_codes.c.id == code_id, one_time_codes.c.used_at.is_(None))
            .values(used_at=now)
        )
        return result.rowcount == 1
