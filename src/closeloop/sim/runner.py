"""The demo's simulation: weeks of a portfolio on a simulated clock.

Everything the simulation itself needs to resume after a crash lives in the
world database beside the sink and the simulated system of record: its clock,
its cursor over delivered messages, and the customer actions it scheduled.
Work the engine did is in the engine's database. Each piece of work is keyed,
so a resumed run repeats nothing and arrives at the same summary.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from closeloop.app import App, TriggerIn
from closeloop.app.links import token_from_url
from closeloop.app.service import CODE_MARK
from closeloop.channels.sink import sink_messages
from closeloop.clock import SimClock
from closeloop.engine import Status
from closeloop.errors import CloseloopError, InputError
from closeloop.sim.customers import on_grid, react
from closeloop.sim.portfolio import backend_events, make_account
from closeloop.sim.visits import Visitor

START = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
metadata = sa.MetaData()
sim_state = sa.Table(
    "sim_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("now", sa.String(40), nullable=False),
    sa.Column("cursor", sa.Integer, nullable=False),
)
sim_actions = sa.Table(
    "sim_actions",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("due_at", sa.String(40), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("result", sa.Text),
    sa.Index("ix_sim_actions_due", "done", "due_at"),
)


# The loop's statements, built once: it runs them at every step of the clock.
_due_actions = (
    sa.select(sim_actions)
    .where(sim_actions.c.done.is_(False), sim_actions.c.due_at <= sa.bindparam("now"))
    .order_by(sim_actions.c.due_at, sim_actions.c.id)
)
_mark_done = (
    sim_actions.update()
    .where(sim_actions.c.id == sa.bindparam("b_id"))
    .values(done=True, result=sa.bindparam("b_result"))
)
_cursor = sa.select(sim_state.c.cursor)
_save_now = sim_state.update().values(now=sa.bindparam("now"))
_next_action = sa.select(sa.func.min(sim_actions.c.due_at)).where(sim_actions.c.done.is_(False))


@dataclass(frozen=True, kw_only=True)
class Params:
    accounts: int
    days: int
    seed: int
    rollout: str = "none"  # the demo's rollout plan: demo, a file, or none
    regression: bool = False  # whether a regression is injected in its third stage


Progress = Callable[[float, float], None]


class Schedule(Protocol):
    """Changes to the world at set simulated times (a drill's faults in the core)."""

    def apply(self, now: datetime) -> None:
        """Bring the world to what it is at `now`."""
        ...

    def next_change(self, now: datetime) -> datetime | None:
        """When the world changes next after `now`, if it does."""
        ...


class Simulation:
    def __init__(
        self,
        app: App,
        clock: SimClock,
        params: Params,
        visitor: Visitor,
        schedule: Schedule | None = None,
    ) -> None:
        self.app = app
        self.clock = clock
        self.params = params
        self.visitor = visitor  # the customers' browser on the mini-app
        self.schedule = schedule
        self.world = app.sink.engine
        self._looked_at: int | None = None  # the sink's delivery count when last read in full
        metadata.create_all(self.world)

    # -- setup -------------------------------------------------------------
    def prepare(self, *, resume: bool) -> None:
        with self.world.begin() as c:
            row = c.execute(sa.select(sim_state)).first()
        if row is not None:
            if not resume:
                raise InputError(
                    "this output folder already holds a run: pass --resume "
                    "to continue it, or choose another --out"
                )
            stored = Params(**row.params)
            if stored != self.params:
                raise InputError(
                    f"--resume must use the same options as the run it continues "
                    f"({stored}); got {self.params}"
                )
            self.app.dispatcher.release_leases()
            self.clock.set(datetime.fromisoformat(row.now))
            return
        p = self.params
        accounts = [make_account(p.seed, i) for i in range(p.accounts)]
        for start in range(0, len(accounts), 2000):
            self.app.ledger.add_accounts(accounts[start : start + 2000])
        actions = []
        for index in range(p.accounts):
            for event in backend_events(p.seed, index, START, p.days):
                actions.append(
                    {
                        "id": event.id,
                        "kind": "backend",
                        "due_at": _iso(event.at),
                        "payload": {"type": event.type, "data": event.data},
                        "done": False,
                        "result": None,
                    }
                )
        with self.world.begin() as c:
            for start in range(0, len(actions), 5000):
                c.execute(sim_actions.insert(), actions[start : start + 5000])
            c.execute(sim_state.insert().values(id=1, params=p.__dict__, now=_iso(START), cursor=0))
        self.clock.set(START)

    # -- the loop ----------------------------------------------------------
    def run(self, progress: Progress | None = None) -> None:
        end = START + timedelta(days=self.params.days)
        while True:
            now = self.app.clock.now()
            if self.schedule is not None:
                self.schedule.apply(now)
            busy = True
            while busy:
                busy = bool(self._run_actions(now)) | bool(self.app.work())
                busy = self._schedule_reactions() or busy
            self._save(now)
            if progress:
                progress(min((now - START) / timedelta(days=1), self.params.days), self.params.days)
            following = self._next_due()
            if following is None:
                if now >= end or not self._live_cases():
                    return
                following = now + timedelta(hours=1)
            self.clock.set(max(on_grid(following), now + timedelta(minutes=15)))

    def _run_actions(self, now: datetime) -> int:
        with self.world.connect() as c:
            rows = c.execute(_due_actions, {"now": _iso(now)}).all()
        if not rows:
            return 0
        triggers = [
            TriggerIn(id=r.id, type=r.payload["type"], data=r.payload["data"])
            for r in rows
            if r.kind == "backend"
        ]
        results: dict[str, str] = {}
        if triggers:
            for start in range(0, len(triggers), 1000):
                for result in self.app.runtime.intake(triggers[start : start + 1000]):
                    results[result.trigger_id] = result.status
        for row in rows:
            if row.kind == "session":
                results[row.id] = self._visit(row.payload)
            elif row.kind == "opt_out":
                try:
                    self.app.service.opt_out(
                        row.payload["case_id"], row.payload["channel"], key=f"sim:{row.id}"
                    )
                    results[row.id] = "opted_out"
                except CloseloopError as exc:  # the case closed meanwhile
                    results[row.id] = f"refused: {exc}"
        # A trigger the core could not give the account for is sent again at the next step.
        done = [r for r in rows if results.get(r.id) != "unavailable"]
        if done:
            with self.world.begin() as c:
                c.execute(
                    _mark_done, [{"b_id": r.id, "b_result": results.get(r.id, "")} for r in done]
                )
        return len(done)

    def _visit(self, payload: dict[str, Any]) -> str:
        """A customer taps a message's link and goes through the mini-app."""
        account = self.app.ledger.read_account(payload["account_id"])
        secrets = dict(account.secrets) if account else {}
        case_id, seed = payload["case_id"], self.params.seed
        result = self.visitor.visit(seed, payload, secrets, case_id)
        if result == "link: not valid" and not self.app.runtime.case(case_id).status.terminal:
            # Used or expired: the customer answers "the link does not work" and is
            # sent a new one (what an agent's "send a new link" does). A visit cut
            # short by a crash is taken up again the same way on --resume.
            link = self.app.service.issue_link(case_id, payload.get("channel", "sms"))
            result = self.visitor.visit(
                seed, {**payload, "token": token_from_url(link)}, secrets, case_id
            )
        return result

    def _schedule_reactions(self) -> bool:
        deliveries = self.app.sink.deliveries
        if deliveries == self._looked_at:  # nothing arrived since the last look found all
            return False
        with self.world.connect() as c:
            cursor = c.execute(_cursor).scalar_one()
        delivered = self.app.sink.delivered_after(cursor, limit=_LOOK)
        if len(delivered) < _LOOK:
            self._looked_at = deliveries
        if not delivered:
            return False
        with self.app.store.read() as tx:
            cases = tx.load_cases(sorted({m["case_id"] for m in delivered}))
        actions = []
        for message in delivered:
            case = cases.get(message["case_id"])
            if case is None:
                continue
            index = int(case.account_id.split("-")[1])
            for reaction in react(
                self.params.seed, message, index, datetime.fromisoformat(message["delivered_at"])
            ):
                payload = {**reaction.payload, "account_id": case.account_id}
                actions.append(
                    {
                        "id": f"{reaction.kind}:{message['idempotency_key']}",
                        "kind": reaction.kind,
                        "due_at": _iso(reaction.at),
                        "payload": payload,
                        "done": False,
                        "result": None,
                    }
                )
        with self.world.begin() as c:
            if actions:
                known = {
                    r[0]
                    for r in c.execute(
                        sa.select(sim_actions.c.id).where(
                            sim_actions.c.id.in_([a["id"] for a in actions])
                        )
                    )
                }
                fresh = [a for a in actions if a["id"] not in known]
                if fresh:
                    c.execute(sim_actions.insert(), fresh)
            c.execute(sim_state.update().values(cursor=delivered[-1]["seq"]))
        return True

    def _save(self, now: datetime) -> None:
        with self.world.begin() as c:
            c.execute(_save_now, {"now": _iso(now)})

    def _next_due(self) -> datetime | None:
        with self.world.connect() as c:
            action = c.execute(_next_action).scalar_one_or_none()
        with self.app.store.read() as tx:
            candidates = [tx.next_timer_due(), tx.next_outbox_due()]
        if action:
            candidates.append(datetime.fromisoformat(action))
        if self.schedule is not None:
            candidates.append(self.schedule.next_change(self.app.clock.now()))
        due = [c for c in candidates if c is not None]
        return min(due) if due else None

    def _live_cases(self) -> int:
        with self.app.store.read() as tx:
            counts = tx.status_counts()
        return sum(n for s, n in counts.items() if not Status(s).terminal)


_LOOK = 10_000  # delivered messages read at a time


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def summarize(app: App, params: Params, database: str) -> dict[str, Any]:
    """The outcome metrics of a finished run."""
    with app.store.read() as tx:
        counts = tx.status_counts()
        boxes = tx.outbox_counts()
        channels = tx.messages_by_channel()
        held = tx.contact_decisions()
        consents = tx.consent_counts()
        segments, sms_cost = tx.sms_usage()
        retries = tx.writeback_retries()
        connector_events = tx.connector_events()
        durations = []
        agent_free = 0
        for case in tx.all_cases():
            if case.status is Status.RESOLVED and case.closed_at is not None:
                durations.append((case.closed_at - case.opened_at).total_seconds() / 3600)
                agent_free += 0 if case.agent_touched else 1
    codes = _codes_delivered(app)
    cases = sum(counts.values())
    reached = cases - counts.get("ineligible", 0) - counts.get("not_enrolled", 0)
    resolved = counts.get("resolved", 0)
    wb_done, wb_failed = boxes.get(("writeback", "done"), 0), boxes.get(("writeback", "failed"), 0)
    sent = sum(channels.values())

    def rate(n: int, d: int) -> float:
        return round(n / d, 4) if d else 0.0

    return {
        "accounts": params.accounts,
        "days": params.days,
        "seed": params.seed,
        "cases": cases,
        "terminal_states": {s.value: counts.get(s.value, 0) for s in Status if s.terminal},
        "live_cases": sum(n for s, n in counts.items() if not Status(s).terminal),
        "completion_rate": rate(resolved, reached),
        "median_time_to_resolution_hours": round(statistics.median(durations), 2)
        if durations
        else None,
        "writeback_success_rate": rate(wb_done, wb_done + wb_failed),
        "writeback_retries": retries,
        "breaker_openings": connector_events.get("breaker_opened", 0),
        "exception_rate": rate(counts.get("exception", 0), reached),
        "deflection_rate": rate(agent_free, reached),
        "touches_per_resolution": rate(sent, resolved),
        "messages_sent": {ch: channels.get(ch, 0) for ch in ("email", "sms", "whatsapp")},
        "one_time_codes": {ch: codes.get(ch, 0) for ch in ("email", "sms")},
        "deferred": {r: held["deferred"].get(r, 0) for r in ("quiet_hours", "fatigue_cap")},
        "blocked": dict(sorted(held["blocked"].items())),
        "opt_outs": consents.get("withdrawn", 0),
        "sms_segments": segments,
        "sms_cost": float(sms_cost),
        "duplicate_writebacks": app.ledger.duplicate_effects(),
        "database": database,
    }


def _codes_delivered(app: App) -> dict[str, int]:
    """One-time codes the customers' devices received, by channel (sent outside the outbox)."""
    stmt = (
        sa.select(sink_messages.c.channel, sa.func.count())
        .where(sink_messages.c.idempotency_key.contains(CODE_MARK, autoescape=True))
        .group_by(sink_messages.c.channel)
    )
    with app.sink.engine.connect() as c:
        return {channel: n for channel, n in c.execute(stmt).all()}


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False)
