"""The local sink provider: a real store of delivered messages.

The demo and the tests deliver here. Like a provider that honours idempotency
keys, a message sent twice with the same key is delivered once (its attempts
are counted, so a duplicate send is visible). Addresses under the reserved
``.invalid`` domain and the fictional 555-01xx numbers bounce permanently.
"""

from __future__ import annotations

from collections.abc import Callable
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


def bounces(address: str) -> bool:
    return address.endswith(".invalid") or address.startswith("+1555555501")


class SinkChannel:
    """Delivers into the `sink_messages` table of its own database."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock
        metadata.create_all(engine)

    def send(self, message: OutgoingMessage) -> SendResult:
        if bounces(message.address):
            return SendResult(status="failed", reason="unreachable address")
        with self.engine.begin() as c:
            updated = c.execute(_again, {"key": message.idempotency_key}).rowcount
            if not updated:
                c.execute(
                    _deliver,
                    {
                        "idempotency_key": message.idempotency_key,
                        "case_id": message.case_id,
                        "channel": message.channel,
                        "address": message.address,
                        "subject": message.subject,
                        "body": message.body,
                        "link": message.link,
                        "attempts": 1,
                        "delivered_at": self.clock().isoformat(),
                    },
                )
        return SendResult(status="sent", provider_id=short_digest(message.idempotency_key, 16))

    def delivered_after(self, seq: int, limit: int = 10_000) -> list[dict[str, Any]]:
        stmt = (
            sa.select(sink_messages)
            .where(sink_messages.c.seq > seq)
            .order_by(sink_messages.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(stmt)]
