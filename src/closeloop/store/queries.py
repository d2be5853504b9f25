"""Statements the dispatchers and readers run often, built once.

Building a SQLAlchemy statement costs several times more than executing a
prebuilt one with bound parameters. (The per-step case statements are in
`driver.py`.)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from closeloop.store.tables import case_events, links, outbox, timers, unsubscribe_tokens

_now: sa.BindParameter[object] = sa.bindparam("now")

seen = (
    sa.select(case_events.c.id)
    .where(
        case_events.c.case_id == sa.bindparam("case_id"),
        case_events.c.dedupe_key == sa.bindparam("key"),
    )
    .limit(1)
)
history = (
    sa.select(case_events)
    .where(case_events.c.case_id == sa.bindparam("case_id"))
    .order_by(case_events.c.seq)
)

next_timer = sa.select(sa.func.min(timers.c.due_at))


def _outbox_due(kind: Any) -> sa.ColumnElement[bool]:
    """Pending, due, and not leased by a live worker."""
    return sa.and_(
        outbox.c.kind == kind,
        outbox.c.status == "pending",
        outbox.c.next_attempt_at <= _now,
        sa.or_(outbox.c.leased_until.is_(None), outbox.c.leased_until <= _now),
    )


# When the outbox next has work: the earliest attempt of an unleased row of a
# kind (an index range of ix_outbox_due), or the earliest lease end (ix_outbox_leased).
next_unleased = sa.select(sa.func.min(outbox.c.next_attempt_at)).where(
    outbox.c.kind == sa.bindparam("kind"),
    outbox.c.status == "pending",
    outbox.c.leased_until.is_(None),
)
next_lease_end = sa.select(sa.func.min(outbox.c.leased_until)).where(
    outbox.c.leased_until.is_not(None), outbox.c.status == "pending"
)
insert_link = links.insert()


def _exists(where: sa.ColumnElement[bool], table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.exists(sa.select(sa.literal(1)).select_from(table).where(where))


# One round trip to learn which kinds of work are due.
due_work = sa.select(
    _exists(timers.c.due_at <= _now, timers).label("timers"),
    *[_exists(_outbox_due(kind), outbox).label(kind) for kind in ("message", "writeback")],
)

link_by_hash = sa.select(links).where(links.c.token_hash == sa.bindparam("token_hash"))
use_link = (
    links.update()
    .where(links.c.token_hash == sa.bindparam("b_hash"), links.c.used_at.is_(None))
    .values(used_at=sa.bindparam("b_now"))
)

insert_unsubscribe = unsubscribe_tokens.insert()
