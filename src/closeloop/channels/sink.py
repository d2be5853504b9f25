"""The local sink provider: a real store of delivered messages.

The demo and the tests deliver here. Like a provider that honours idempotency
keys, a message sent twice with the same key is delivered once (its attempts
are counted, so a duplicate send is visible). Addresses under the reserved
``.invalid`` domain and the fictional 555-01xx numbers bounce permanently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from closeloop.channels.port import OutgoingMessage, SendResult
from closeloop.ids import short_digest

metadata = sa.MetaData()
sink_messages = sa.Table(
    "sink_messages",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("subject", sa.Text),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("link", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("delivered_at", sa.String(40), nullable=False),
)


_again = (
    sink_messages.update()
    .where(sink_messages.c.idempotency_key == sa.bindparam("key"))
    .values(attempts=sink_messages.c.attempts + 1)
)
_deliver = sink_messages.insert()
_known = sa.select(sink_messages.c.idempotency_key).where(
    sink_messages.c.idempotency_key.in_(sa.bindparam("keys", expanding=True))
)


def bounces(address: str) -> bool:
    return address.endswith(".invalid") or address.startswith("+1555555501")


class SinkChannel:
    """Delivers into the `sink_messages` table of its own database."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock
        self.deliveries = 0  # by this process: lets a reader skip looking when nothing arrived
        # Senders on several threads take turns here rather than in SQLite's busy
        # handler, which sleeps a millisecond or more between tries.
        self._writing = threading.Lock()
        metadata.create_all(engine)

    def send(self, message: OutgoingMessage) -> SendResult:
        if bounces(message.address):
            return SendResult(status="failed", reason="unreachable address")
        self.deliver([message])
        return SendResult(status="sent", provider_id=short_digest(message.idempotency_key, 16))

    def deliver(self, messages: Sequence[OutgoingMessage]) -> None:
        """Deliver messages in one transaction; one already delivered counts another attempt."""
        if not messages:
            return
        keys = [m.idempotency_key for m in messages]
        at = self.clock().isoformat()
        fresh: dict[str, dict[str, Any]] = {}
        with self._writing:
            with self.engine.begin() as c:
                known = {k for (k,) in c.execute(_known, {"keys": keys})}
                for m in messages:
                    if m.idempotency_key in known or m.idempotency_key in fresh:
                        continue
                    fresh[m.idempotency_key] = {
                        "idempotency_key": m.idempotency_key,
                        "case_id": m.case_id,
                        "channel": m.channel,
                        "address": m.address,
                        "subject": m.subject,
                        "body": m.body,
                        "link": m.link,
                        "attempts": 1,
                        "delivered_at": at,
                    }
                again = [{"key": k} for k in keys if k in known]
                if again:
                    c.execute(_again, again)
                if fresh:
                    c.execute(_deliver, list(fresh.values()))
            self.deliveries += len(fresh)  # once committed

    def delivered_after(self, seq: int, limit: int = 10_000) -> list[dict[str, Any]]:
        """Messages delivered after `seq`, oldest first."""
        stmt = (
            sa.select(sink_messages)
            .where(sink_messages.c.seq > seq)
            .order_by(sink_messages.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(stmt)]
