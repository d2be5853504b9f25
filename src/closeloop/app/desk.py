"""The agent's desk: the exception queue, claims, a case's whole file, and what an agent does.

An exception is worked by one agent at a time: claiming it is a conditional
update (it succeeds for one of two agents clicking at once), and every action
on the case needs the acting agent's claim. Each action is an engine input
with the agent as its actor (`ResolvedByAgent`, `WritebackRetried`,
`LinkResent`, `ClosedUnresolvable`), so it lands in the case's history like
anything else, and it closes the exception in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from closeloop.app.dispatch import writeback_view
from closeloop.app.runtime import Runtime
from closeloop.app.staff import Principal
from closeloop.clock import Clock
from closeloop.engine import (
    AgentAction,
    ClosedUnresolvable,
    LinkResent,
    ResolvedByAgent,
    Status,
    WritebackRetried,
)
from closeloop.errors import InputError, NotFound, StateError
from closeloop.store import Store, Tx

ACTIONS = ("retry", "resolve", "new_link", "close")


class Desk:
    def __init__(self, store: Store, runtime: Runtime, clock: Clock) -> None:
        self.store = store
        self.runtime = runtime
        self.clock = clock

    def queue(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Open exceptions, the most urgent first, with their age and whether past their SLA."""
        now = self.clock.now()
        with self.store.read() as tx:
            rows = tx.open_exceptions(queue)
            cases = tx.load_cases(sorted({r["case_id"] for r in rows}))
        for row in rows:
            case = cases.get(row["case_id"])
            row["workflow"] = case.workflow if case else ""
            row["age_seconds"] = (now - row["opened_at"]).total_seconds()
            row["overdue"] = row["due_at"] <= now
        return rows

    def queues(self) -> list[str]:
        """The queues with open exceptions."""
        with self.store.read() as tx:
            return tx.open_queues()

    def claim(self, exception_id: str, agent: Principal) -> None:
        with self.store.transaction() as tx:
            if not tx.claim_exception(exception_id, agent.name, self.clock.now()):
                raise StateError(self._why_not(tx, exception_id))

    def release(self, exception_id: str, agent: Principal) -> None:
        """Let go of the agent's claim (an admin may release anyone's)."""
        with self.store.transaction() as tx:
            whose = None if agent.may("admin") else agent.name
            if not tx.release_exception(exception_id, whose):
                raise StateError(self._why_not(tx, exception_id, releasing=True))

    @staticmethod
    def _why_not(tx: Tx, exception_id: str, *, releasing: bool = False) -> str:
        row = tx.exception(exception_id)
        if row is None or row["status"] != "open":
            return f"exception {exception_id} is not open"
        if releasing and row["claimed_by"] is None:
            return "nobody has claimed it"
        return f"{row['claimed_by']} is working on it"

    # -- actions ---------------------------------------------------------------
    def retry(self, case_id: str, agent: Principal, note: str = "") -> None:
        """Send the case's failed writebacks again, under their own idempotency keys."""
        with self.store.read() as tx:
            case = tx.load_case(case_id)
            rows = tx.writebacks(case_id)
            history = tx.history(case_id)
        if case is None:
            raise NotFound(f"no case {case_id}")
        # The outcome now standing: an earlier one's failed writebacks are history.
        rows = [r for r in rows if r["idempotency_key"] in case.pending_writebacks]
        failed = tuple(r["idempotency_key"] for r in rows if r["status"] == "failed")
        if not failed:
            raise StateError("the case has no failed writeback to retry")
        settled = tuple(r["idempotency_key"] for r in rows if r["status"] == "done")
        rounds = sum(1 for h in history if h["kind"] == "writeback_retried")
        event = WritebackRetried(
            operation_keys=failed,
            settled=settled,
            round=rounds + 1,
            actor=agent.actor,
            note=note,
        )
        self._act(case_id, agent, event, "retry")

    def resolve(
        self, case_id: str, agent: Principal, option: str, values: Mapping[str, Any], note: str
    ) -> None:
        if not note.strip():
            raise InputError("say what was agreed with the customer: a note is required")
        event = ResolvedByAgent(option=option, values=dict(values), actor=agent.actor, note=note)
        self._act(case_id, agent, event, "resolve")

    def new_link(self, case_id: str, agent: Principal, channel: str, note: str = "") -> None:
        self._act(
            case_id, agent, LinkResent(channel=channel, actor=agent.actor, note=note), "new_link"
        )

    def close(self, case_id: str, agent: Principal, note: str) -> None:
        if not note.strip():
            raise InputError("say why nothing more can be done: a note is required")
        self._act(case_id, agent, ClosedUnresolvable(actor=agent.actor, note=note), "close")

    def _act(self, case_id: str, agent: Principal, event: AgentAction, action: str) -> None:
        now = self.clock.now()
        with self.store.transaction() as tx:
            open_ = [e for e in tx.case_exceptions(case_id) if e["status"] == "open"]
            if not open_:
                if tx.load_case(case_id) is None:
                    raise NotFound(f"no case {case_id}")
                raise StateError(f"case {case_id} is not in the exception queue")
            exception = open_[-1]
            if exception["claimed_by"] != agent.name:
                who = exception["claimed_by"]
                raise StateError(f"{who} is working on it" if who else "claim the case first")
            decision = self.runtime.apply(case_id, event, tx=tx)
            if decision.rejected:
                raise StateError(decision.rejected)
            tx.close_exception(exception["id"], agent.name, action, now)

    # -- the case file -----------------------------------------------------------
    def case_file(self, case_id: str) -> dict[str, Any]:
        """Everything about a case an agent decides on, with one timeline of it all."""
        with self.store.read() as tx:
            case = tx.load_case(case_id)
            if case is None:
                raise NotFound(f"no case {case_id}")
            history = tx.history(case_id)
            writebacks = tx.writebacks(case_id)
            messages = tx.case_messages(case_id)
            docs = tx.case_documents(case_id)
            exceptions = tx.case_exceptions(case_id)
        timeline: list[dict[str, Any]] = [
            {
                "at": h["at"],
                "kind": h["kind"],
                "actor": h["actor"],
                "reason": h["reason"],
                "data": h["data"],
                "source": "history",
            }
            for h in history
        ]
        for m in messages:
            payload, result = m["payload"] or {}, m["result"] or {}
            timeline.append(
                {
                    "at": m["updated_at"],
                    "kind": f"message_{m['delivery'] or m['status']}",
                    "actor": "channel",
                    "reason": f"{payload.get('channel')} {payload.get('template')}",
                    "data": {
                        k: v for k, v in result.items() if k in ("error", "reason", "blocked")
                    },
                    "source": "message",
                }
            )
        for d in docs:
            timeline.append(
                {
                    "at": d["stored_at"],
                    "kind": f"document_{d['status']}",
                    "actor": "customer",
                    "reason": f"{d['type']} {d['size']} bytes",
                    "data": {},
                    "source": "document",
                }
            )
        timeline.sort(key=lambda e: e["at"])
        open_ = [e for e in exceptions if e["status"] == "open"]
        return {
            "case": case,
            "in_exception": case.status is Status.EXCEPTION,
            "exception": open_[-1] if open_ else None,
            "exceptions": exceptions,
            "eligibility": [h for h in history if h["kind"] in ("opened", "ineligible")],
            "identity": [h for h in history if h["kind"].startswith("identity_")],
            "writebacks": [writeback_view(w) for w in writebacks],
            "messages": messages,
            "documents": docs,
            "timeline": timeline,
            "contacts": [c.channel for c in case.contacts if c.consent],
        }
