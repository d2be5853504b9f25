"""Mini-app sessions: what a redeemed link turns into, kept on the server.

The browser holds only a random id (256 bits, in a ``__Host-`` cookie); the
server keeps its hash with the case, the identity level reached, a CSRF
token, and when it started and was last seen. A session ends after 30 idle
minutes or 12 hours in all, whatever the browser sends. Passing an identity
check ends the session and starts a new one (a new id, the same start), so
an id seen before verification is worth nothing after it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from closeloop.clock import Clock
from closeloop.store import Store, Tx

IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)
# A page view within this long of the last one does not write: the idle limit
# is kept to the minute, and most views then cost no write transaction.
TOUCH = timedelta(minutes=1)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Session:
    id: str  # what the cookie carries; only its hash is stored
    case_id: str
    channel: str
    csrf: str
    level: str  # the identity level reached: "none", "known_facts", ...
    started_at: datetime

    @property
    def verified(self) -> bool:
        return self.level != "none"


class Sessions:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def start(
        self,
        case_id: str,
        channel: str,
        *,
        level: str = "none",
        started_at: datetime | None = None,
    ) -> Session:
        with self.store.transaction() as tx:
            return self._start(tx, case_id, channel, level=level, started_at=started_at)

    def _start(
        self, tx: Tx, case_id: str, channel: str, *, level: str, started_at: datetime | None
    ) -> Session:
        now = self.clock.now()
        session = Session(
            id=secrets.token_urlsafe(32),
            case_id=case_id,
            channel=channel,
            csrf=secrets.token_urlsafe(32),
            level=level,
            started_at=started_at or now,
        )
        tx.save_session(
            {
                "id_hash": _hash(session.id),
                "case_id": case_id,
                "channel": channel,
                "csrf": session.csrf,
                "level": level,
                "created_at": session.started_at,
                "seen_at": now,
                "ended_at": None,
            }
        )
        return session

    def find(self, session_id: str | None) -> Session | None:
        """The live session with this id, now seen again; None if unknown or ended."""
        if not session_id:
            return None
        now = self.clock.now()
        with self.store.read() as tx:
            row = tx.session(_hash(session_id))
        if row is None or row["ended_at"] is not None:
            return None
        expired = now - row["seen_at"] > IDLE or now - row["created_at"] > ABSOLUTE
        if expired or now - row["seen_at"] >= TOUCH:
            with self.store.transaction() as tx:
                if expired:
                    tx.end_session(_hash(session_id), now)
                    return None
                tx.touch_session(_hash(session_id), now)
        return Session(
            id=session_id,
            case_id=row["case_id"],
            channel=row["channel"],
            csrf=row["csrf"],
            level=row["level"],
            started_at=row["created_at"],
        )

    def rotate(self, session: Session, level: str) -> Session:
        """End `session` and start its successor at `level` (after an identity check), at once."""
        with self.store.transaction() as tx:
            tx.end_session(_hash(session.id), self.clock.now())
            return self._start(
                tx, session.case_id, session.channel, level=level, started_at=session.started_at
            )

    def end(self, session: Session) -> None:
        with self.store.transaction() as tx:
            tx.end_session(_hash(session.id), self.clock.now())
