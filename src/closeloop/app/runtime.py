"""The runtime: applies the engine to stored cases and commits the outcome.

Every path into a case goes through here: trigger intake, backend events,
due timers, dispatch results and customer actions. Each commits the case's
new state, its history and its intents in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from closeloop import rollout
from closeloop.app.rollouts import Live, Rollouts
from closeloop.app.tracing import Tracing
from closeloop.clock import Clock
from closeloop.connectors import Account, Connector
from closeloop.engine import (
    EXPIRE,
    BackendEvent,
    Case,
    Contact,
    Decision,
    Event,
    Opened,
    Status,
    TimerFired,
    step,
)
from closeloop.errors import NotFound, OperationalError, TriggerError
from closeloop.ids import case_id
from closeloop.spec import CompiledSpec, load_spec
from closeloop.spec.trigger import parse_trigger_data
from closeloop.store import Applied, Store, Tx


@dataclass(frozen=True, kw_only=True)
class TriggerIn:
    """A backend event as it arrives: its id makes intake idempotent."""

    id: str
    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class IntakeResult:
    trigger_id: str
    case_id: str | None
    status: str
    created: bool
    closed: int = 0
    reason: str = ""  # why nothing was opened, for an `unavailable` trigger


class Workflows:
    """Compiled specs by key and by the event that triggers them."""

    def __init__(self, specs: Iterable[CompiledSpec] = ()) -> None:
        self.by_key: dict[str, CompiledSpec] = {}
        self.by_event: dict[str, CompiledSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, compiled: CompiledSpec) -> None:
        self.by_key[compiled.key] = compiled
        current = self.by_event.get(compiled.spec.trigger.event)
        if current is None or current.spec.version <= compiled.spec.version:
            self.by_event[compiled.spec.trigger.event] = compiled

    def closers(self, event_type: str) -> list[CompiledSpec]:
        return [c for c in self.by_event.values() if event_type in c.spec.trigger.closes_on]


class Runtime:
    def __init__(
        self,
        *,
        store: Store,
        workflows: Workflows,
        connector: Connector,
        clock: Clock,
        cohort_percent: float = 100.0,
        rollouts: Rollouts | None = None,
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.connector = connector
        self.clock = clock
        self.cohort_percent = cohort_percent  # when no rollout of the workflow is live
        self.rollouts = rollouts
        self.tracing = Tracing()  # no-op until bootstrap hands it the configured one

    def register_workflows(self) -> None:
        """Record each loaded spec version so cases can always find theirs."""
        with self.store.transaction() as tx:
            for compiled in self.workflows.by_key.values():
                spec = compiled.spec
                tx.save_workflow(
                    compiled.key, spec.workflow, spec.version, compiled.source, self.clock.now()
                )

    def spec_for(self, case: Case, tx: Tx | None = None) -> CompiledSpec:
        compiled = self.workflows.by_key.get(case.workflow)
        if compiled is None and tx is not None:
            source = tx.workflow_source(case.workflow)
            if source is not None:
                compiled = load_spec(source, filename=case.workflow)
                self.workflows.by_key[compiled.key] = compiled
        if compiled is None:
            raise NotFound(f"workflow {case.workflow} of case {case.id} is not loaded")
        return compiled.for_cohort(case.cohort)  # an arm with a variant gets the variant

    # -- intake --------------------------------------------------------------
    def validate(self, trigger: TriggerIn) -> CompiledSpec | None:
        """The spec a trigger opens a case of (None for a closing event); TriggerError if bad."""
        return self._plan(trigger)[0]

    def _plan(self, trigger: TriggerIn) -> tuple[CompiledSpec | None, dict[str, Any]]:
        """The spec and canonical data of a trigger; TriggerError if it is bad."""
        if not trigger.id or not trigger.id.strip():
            raise TriggerError(
                "trigger id is empty", field_errors=[{"loc": ["id"], "msg": "required"}]
            )
        compiled = self.workflows.by_event.get(trigger.type)
        if compiled is not None:
            return compiled, parse_trigger_data(compiled.spec, trigger.data)
        closers = self.workflows.closers(trigger.type)
        if not closers:
            known = ", ".join(
                sorted(
                    {
                        *self.workflows.by_event,
                        *(
                            e
                            for c in self.workflows.by_event.values()
                            for e in c.spec.trigger.closes_on
                        ),
                    }
                )
            )
            raise TriggerError(
                f"no workflow handles event type {trigger.type!r} (known: {known})",
                field_errors=[{"loc": ["type"], "msg": "unknown event type"}],
            )
        key = closers[0].spec.trigger.key
        if not str(trigger.data.get(key, "")).strip():
            raise TriggerError(
                f"{trigger.type} needs data.{key}",
                field_errors=[{"loc": ["data", key], "msg": "required"}],
            )
        return None, dict(trigger.data)

    def intake(self, triggers: Sequence[TriggerIn]) -> list[IntakeResult]:
        """Open (or find) the case of each trigger; close cases on closing events.

        Raises TriggerError for the first invalid trigger before writing anything.
        Accounts are read from the system of record before the write
        transaction (no network call holds the database's write lock); a
        trigger whose account cannot be read now (the core is down or answers
        garbage) opens nothing and is answered ``unavailable``: its sender
        sends it again, and the trigger id keeps that idempotent.
        """
        with self.tracing.span("intake", {"closeloop.triggers": len(triggers)}):
            return self._intake(triggers)

    def _intake(self, triggers: Sequence[TriggerIn]) -> list[IntakeResult]:
        plans = [(t, *self._plan(t)) for t in triggers]
        with self.store.read() as tx:
            seen = tx.cases_by_triggers([t.id for t, c, _ in plans if c is not None])
            names = {c.spec.workflow for _, c, _ in plans if c is not None}
            lives = {n: self.rollouts.live_for(tx, n) for n in names} if self.rollouts else {}
        accounts: dict[str, Account | OperationalError | None] = {}
        for trigger, compiled, data in plans:
            if compiled is None or trigger.id in seen:
                continue
            account_id = str(data[compiled.spec.trigger.key])
            if account_id not in accounts:
                try:
                    accounts[account_id] = self.connector.read_account(account_id)
                except OperationalError as exc:
                    accounts[account_id] = exc
        results: list[IntakeResult] = []
        with self.store.transaction() as tx:
            batch: list[Applied] = []
            pending: dict[str, str] = {}
            known = tx.cases_by_triggers([t.id for t, c, _ in plans if c is not None])
            for trigger, compiled, data in plans:
                if compiled is None:
                    results.append(self._close_elsewhere(tx, trigger))
                    continue
                existing = known.get(trigger.id)
                if existing is not None or trigger.id in pending:
                    case_id = existing.id if existing else pending[trigger.id]
                    status = existing.status.value if existing else "pending"
                    results.append(
                        IntakeResult(
                            trigger_id=trigger.id, case_id=case_id, status=status, created=False
                        )
                    )
                    continue
                account = accounts.get(str(data[compiled.spec.trigger.key]))
                if isinstance(account, OperationalError):
                    results.append(
                        IntakeResult(
                            trigger_id=trigger.id,
                            case_id=None,
                            status="unavailable",
                            created=False,
                            reason=str(account),
                        )
                    )
                    continue
                live = lives.get(compiled.spec.workflow)
                decision = self._open(compiled, trigger, data, account, live)
                pending[trigger.id] = decision.case.id
                batch.append(
                    Applied(decision=decision, dedupe_key=f"trigger:{trigger.id}", new=True)
                )
                results.append(
                    IntakeResult(
                        trigger_id=trigger.id,
                        case_id=decision.case.id,
                        status=decision.case.status.value,
                        created=True,
                    )
                )
            tx.commit_decisions(batch, self.clock.now())
        return results

    def _open(
        self,
        compiled: CompiledSpec,
        trigger: TriggerIn,
        data: dict[str, Any],
        account: Account | None,
        live: Live | None = None,
    ) -> Decision:
        spec, now = compiled.spec, self.clock.now()
        account_id = str(data[spec.trigger.key])
        facts: dict[str, Any] = dict(account.facts) if account else {}
        facts.setdefault("flags", [])
        if account is None:
            facts["flags"] = [*facts["flags"], "unknown_account"]
        else:
            facts["first_name"] = account.first_name
            facts["locale"] = account.locale
            if account.payment_methods:
                facts["payment_methods"] = [dict(m) for m in account.payment_methods]
        case = Case(
            id=case_id(trigger.id, now),
            workflow=compiled.key,
            trigger_id=trigger.id,
            account_id=account_id,
            status=Status.OUTREACH,
            data=data,
            account=facts,
            contacts=tuple(
                Contact(
                    channel=c["channel"],
                    address=c["address"],
                    consent=bool(c.get("consent", True)),
                    notice=str(c["notice"]) if c.get("notice") else None,
                )
                for c in (account.contacts if account else ())
            ),
            time_zone=account.time_zone if account else None,
            opened_at=now,
            updated_at=now,
        )
        if live is not None:  # a rollout decides: its stage's segment, share and arms
            enrolled, cohort = Rollouts.enrolment(live, account_id, facts)
        else:
            enrolled = rollout.in_cohort(spec.workflow, account_id, self.cohort_percent)
            cohort = "enrolled" if enrolled else "control"
        event = Opened(enrolled=enrolled, cohort=cohort, actor="backend",
                       key=f"trigger:{trigger.id}")  # fmt: skip
        return step(case, event, compiled.for_cohort(cohort), now)

    def _close_elsewhere(self, tx: Tx, trigger: TriggerIn) -> IntakeResult:
        if tx.backend_event_received(trigger.id):
            return IntakeResult(
                trigger_id=trigger.id, case_id=None, status="duplicate", created=False
            )
        specs = self.workflows.closers(trigger.type)
        closers = {c.spec.workflow for c in specs}
        account_id = str(trigger.data[specs[0].spec.trigger.key])
        now = self.clock.now()
        batch = []
        # Cases left out of a rollout within the time an enrolled case would have had
        # to resolve: what happened to them is the control group's outcome.
        longest = max(
            v.spec.outreach.expires_after for c in specs for v in (c, *c.variants.values())
        )
        cases = tx.open_cases_for_account(account_id)
        live = {c.id for c in cases}
        cases += tx.control_cases_for_account(account_id, now - longest)
        for case in cases:
            compiled = self.spec_for(case, tx)
            if compiled.spec.workflow not in closers:
                continue
            event = BackendEvent(type=trigger.type, data=dict(trigger.data), actor="backend")
            decision = step(case, event, compiled, now)
            batch.append(Applied(decision=decision, dedupe_key=f"backend:{trigger.id}"))
        tx.record_backend_event(
            trigger.id, trigger.type, account_id, now, sum(1 for a in batch if a.decision.changed)
        )
        tx.commit_decisions(batch, now)
        closed = sum(
            1 for a in batch if a.decision.case.id in live and a.decision.case.status.terminal
        )
        return IntakeResult(
            trigger_id=trigger.id,
            case_id=None,
            status="closing_event",
            created=False,
            closed=closed,
        )

    # -- single events ---------------------------------------------------------
    def apply(self, case_id: str, event: Event, *, tx: Tx | None = None) -> Decision:
        """Apply one event to one case; an event whose key was seen is a no-op."""
        if tx is None:
            with self.store.transaction() as own:
                return self.apply(case_id, event, tx=own)
        case, seen = tx.load_case_for_event(case_id, event.key)
        if case is None:
            raise NotFound(f"no case {case_id}")
        if seen:
            return Decision(case=case, rejected="already applied")
        decision = step(case, event, self.spec_for(case, tx), self.clock.now())
        tx.commit_decisions([Applied(decision=decision, dedupe_key=event.key)], self.clock.now())
        return decision

    def case(self, case_id: str) -> Case:
        with self.store.read() as tx:
            case = tx.load_case(case_id)
        if case is None:
            raise NotFound(f"no case {case_id}")
        return case

    # -- due timers ----------------------------------------------------------
    def run_due_timers(self, limit: int = 500) -> int:
        """Fire up to `limit` due timers in one transaction; return how many fired."""
        now = self.clock.now()
        with self.store.transaction() as tx:
            due = tx.claim_due_timers(now, limit)
            if not due:
                return 0
            loaded = tx.load_cases(sorted({case_id for case_id, _ in due}))
            by_case: dict[str, list[str]] = {}
            for case_id, name in due:
                by_case.setdefault(case_id, []).append(name)
            batch = []
            for case_id, names in by_case.items():
                case = loaded.get(case_id)
                if case is None:
                    tx.delete_timers([(case_id, n) for n in names])
                    continue
                compiled = self.spec_for(case, tx)
                # The deadline first; commit_decisions writes one case's decisions in order.
                for name in sorted(names, key=lambda n: n != EXPIRE):
                    decision = step(case, TimerFired(name=name), compiled, now)
                    case = decision.case
                    batch.append(Applied(decision=decision, fired_timers=(name,)))
            tx.commit_decisions(batch, now)
        return len(due)
