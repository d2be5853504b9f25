"""The engine: one pure, deterministic function.

    step(case, event, spec, now) -> Decision

No I/O, no wall clock, no randomness: the same inputs always give the same
decision, which is what lets the simulator replay weeks in seconds and lets a
resumed run match an uninterrupted one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from closeloop import policy
from closeloop.contact import next_allowed
from closeloop.contact.phone import to_e164
from closeloop.engine.case import Case, Status
from closeloop.engine.decision import (
    Decision,
    Entry,
    Intent,
    OpenException,
    RequestWriteback,
    RetryWriteback,
    SendMessage,
    SetTimer,
)
from closeloop.engine.events import (
    AgentAction,
    BackendEvent,
    ClosedUnresolvable,
    Disputed,
    Event,
    IdentityChecked,
    LinkOpened,
    LinkResent,
    MessageDeferred,
    MessageFailed,
    MessageSent,
    Opened,
    OptedOut,
    OutcomeSubmitted,
    Reconciled,
    ResolvedByAgent,
    TimerFired,
    WritebackFailed,
    WritebackRetried,
    WritebackSucceeded,
)
from closeloop.engine.reach import rules_for, zones_of
from closeloop.ids import idempotency_key
from closeloop.spec.loader import CompiledSpec

CADENCE = "cadence"
EXPIRE = "expire"
_ACTIVE = frozenset({Status.OUTREACH, Status.ENGAGED})


class _Draft:
    """Accumulates one decision: state changes, history, intents, timers.

    `case` is the case with every change so far: the input case until the
    first change, then a private copy changed in place (one copy per step,
    however many changes), which becomes the decision's case.
    """

    def __init__(self, case: Case, now: datetime) -> None:
        self.original = case
        self.case = case
        self.now = now
        self.history: list[Entry] = []
        self.intents: list[Intent] = []
        self.timers: list[SetTimer] = []
        self.cancel = False

    def record(self, kind: str, actor: str, reason: str = "", **data: Any) -> None:
        self.history.append(Entry(kind=kind, actor=actor, at=self.now, reason=reason, data=data))

    def change(self, **changes: Any) -> None:
        if self.case is self.original:
            self.case = self.original.thawed()
        self.case.amend(**changes)

    def close(self, status: Status, actor: str, reason: str, **data: Any) -> None:
        self.change(status=status, closed_at=self.now, reason=reason)
        self.cancel = True
        self.timers.clear()
        self.record(status.value, actor, reason, **data)

    def decision(self) -> Decision:
        if self.history:
            self.change(seq=self.original.seq + len(self.history), updated_at=self.now)
        return Decision(
            case=self.case,
            history=tuple(self.history),
            intents=tuple(self.intents),
            timers=tuple(self.timers),
            cancel_timers=self.cancel,
        )


def _reject(case: Case, why: str) -> Decision:
    return Decision(case=case, rejected=why)


def step(case: Case, event: Event, compiled: CompiledSpec, now: datetime) -> Decision:
    """Apply one event to one case; return the new state and what to do about it."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"the engine does not handle {type(event).__name__}")
    # A case outside the cohort is closed at once, but what the system of record says
    # of it later is still recorded: that is the control group's outcome.
    control = case.status is Status.NOT_ENROLLED and isinstance(event, BackendEvent)
    # Reconciliation reads what was written back after the case closed.
    late = control or isinstance(event, Reconciled)
    # A case in exception waits for an agent: what the agent does is its only input.
    agent = case.status is Status.EXCEPTION and isinstance(event, AgentAction)
    if case.status.terminal and not isinstance(event, Opened) and not late and not agent:
        return _reject(case, f"case is closed ({case.status.value})")
    draft = _Draft(case, now)
    why = handler(draft, event, compiled)
    if why:
        return _reject(case, why)
    return draft.decision()


def _opened(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, Opened)
    if d.case.seq:
        return "case is already open"
    spec = compiled.spec
    d.record(
        "opened",
        event.actor,
        f"trigger {d.case.trigger_id} ({spec.trigger.event})",
        workflow=spec.key,
    )
    verdict = policy.eligibility(compiled, d.case.data, d.case.account)
    if not verdict.eligible:  # decided before any assignment: in no cohort, no arm
        d.change(cohort="ineligible")
        d.close(Status.INELIGIBLE, "policy", verdict.reason or "", rule=verdict.rule)
        return None
    if not event.enrolled:
        d.change(cohort=event.cohort)
        d.close(
            Status.NOT_ENROLLED,
            "rollout",
            "outside the rollout cohort: business as usual",
            cohort=event.cohort,
        )
        return None
    d.change(status=Status.OUTREACH, cohort=event.cohort)
    d.timers.append(SetTimer(name=EXPIRE, due_at=d.case.opened_at + spec.outreach.expires_after))
    _cadence(d, compiled)
    return None


def _cadence(d: _Draft, compiled: CompiledSpec) -> None:
    """Send the next outreach step if it is due and allowed, else set its timer."""
    steps = compiled.spec.outreach.steps
    offsets = compiled.spec.step_offsets()
    while d.case.next_step < len(steps):
        index = d.case.next_step
        step_ = steps[index]
        due = d.case.opened_at + offsets[index]
        if due > d.now:
            d.timers.append(SetTimer(name=CADENCE, due_at=due))
            return
        skip = _skip_reason(d.case, step_.condition)
        contact = d.case.contact_for(step_.channel)
        channel, template = step_.channel, step_.template
        if skip is None and contact is None and step_.fallback is not None:
            contact = d.case.contact_for(step_.fallback.channel)
            channel, template = step_.fallback.channel, step_.fallback.template
        if skip is None and contact is None:
            skip = f"no address with consent for {step_.channel}"
        if skip is not None:
            d.change(next_step=index + 1)
            d.record("step_skipped", "policy", skip, step=step_.name)
            continue
        assert contact is not None
        rules, zones = rules_for(compiled, d.case), zones_of(d.case)
        allowed = next_allowed(d.now, zones, rules.window)
        if allowed is None:
            d.change(next_step=index + 1)
            d.record(
                "step_skipped",
                "policy",
                "no minute is inside contact hours in every possible time zone",
                step=step_.name,
                code="no_common_hours",
                zones=list(zones),
            )
            continue
        if allowed > d.now:
            d.timers.append(SetTimer(name=CADENCE, due_at=allowed))
            d.record(
                "step_deferred",
                "policy",
                f"quiet hours in {', '.join(zones)}",
                step=step_.name,
                code="quiet_hours",
                until=allowed.isoformat(),
            )
            return
        _send(d, index, step_.name, channel, contact.address, template, step_.priority)
        d.change(next_step=index + 1)


def _send(
    d: _Draft,
    index: int,
    name: str,
    channel: str,
    address: str,
    template: str,
    priority: str = "nudge",
) -> None:
    key = idempotency_key(d.case.id, "message", str(index), channel)
    d.intents.append(
        SendMessage(
            idempotency_key=key,
            channel=channel,
            address=address,
            template=template,
            step=index,
            step_name=name,
            priority=priority,
        )
    )
    d.change(touches=d.case.touches + 1)
    d.record(
        "message_requested",
        "engine",
        f"outreach step {name}",
        channel=channel,
        template=template,
        message_key=key,
    )


def _skip_reason(case: Case, condition: str) -> str | None:
    if condition == "not_opened" and case.link_opened:
        return "the customer already opened the link"
    if condition == "not_verified" and case.verified:
        return "the customer already confirmed their identity"
    return None


def _timer(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, TimerFired)
    if d.case.status not in _ACTIVE:
        return f"no timers run while {d.case.status.value}"
    if event.name == EXPIRE:
        d.close(Status.EXPIRED, "timer", "no resolution before the case's deadline")
        return None
    if event.name == CADENCE:
        before = len(d.history)
        _cadence(d, compiled)
        return None if len(d.history) > before or d.timers else "nothing due"
    return f"unknown timer {event.name}"


def _message_sent(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, MessageSent)
    d.record("message_sent", "channel", "", channel=event.channel, message_key=event.message_id)
    return None


def _message_failed(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, MessageFailed)
    d.record(
        "message_failed",
        "channel",
        event.reason,
        channel=event.channel,
        message_key=event.message_id,
        permanent=event.permanent,
    )
    steps = compiled.spec.outreach.steps
    if not (event.permanent and d.case.status in _ACTIVE and 0 <= event.step < len(steps)):
        return None
    fallback = steps[event.step].fallback
    if fallback is not None and event.channel == steps[event.step].channel:
        contact = d.case.contact_for(fallback.channel)
        if contact is not None:
            _send(
                d,
                event.step,
                steps[event.step].name,
                fallback.channel,
                contact.address,
                fallback.template,
                steps[event.step].priority,
            )
    return None


def _message_deferred(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, MessageDeferred)
    d.record(
        "message_deferred",
        "policy",
        event.detail,
        channel=event.channel,
        message_key=event.message_id,
        code=event.reason,
        until=event.until.isoformat(),
    )
    return None


def _link_opened(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, LinkOpened)
    if d.case.status not in _ACTIVE:
        return f"the case is {d.case.status.value}"
    d.change(link_opened=True, status=Status.ENGAGED)
    d.record("link_opened", event.actor, "", channel=event.channel)
    return None


def _identity(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, IdentityChecked)
    if d.case.status not in _ACTIVE:
        return f"the case is {d.case.status.value}"
    if event.passed:
        d.change(verified=True, identity_level=event.level)
        d.record("identity_passed", event.actor, "", method=event.method, level=event.level)
        return None
    identity = compiled.spec.identity
    if event.method == "one_time_code":  # wrong codes have their own, larger allowance
        failures, limit = d.case.code_failures + 1, identity.code_attempts
        d.change(code_failures=failures)
    else:
        failures, limit = d.case.identity_failures + 1, identity.max_attempts
        d.change(identity_failures=failures)
    d.record("identity_failed", event.actor, f"attempt {failures}", method=event.method)
    if failures >= limit:
        _exception(
            d,
            compiled,
            "identity_locked",
            f"{failures} failed identity attempts ({event.method})",
            actor="policy",
        )
    return None


def _exception(d: _Draft, compiled: CompiledSpec, reason: str, detail: str, *, actor: str) -> None:
    route = compiled.spec.exceptions.get(reason)  # type: ignore[call-overload]
    queue, sla = (route.queue, route.sla) if route else ("exceptions", timedelta(days=1))
    d.intents.append(
        OpenException(  # a case may come back to the queue after an agent's retry or link
            idempotency_key=idempotency_key(d.case.id, "exception", str(d.case.seq)),
            reason=reason,
            queue=queue,
            due_at=d.now + sla,
            detail=detail,
        )
    )
    d.close(Status.EXCEPTION, actor, f"{reason}: {detail}", queue=queue)


def _submitted(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, OutcomeSubmitted)
    if d.case.status not in _ACTIVE:
        return f"the case is {d.case.status.value}"
    if compiled.spec.identity.known_facts and not d.case.verified:
        return "identity must be confirmed first"
    return _outcome(d, compiled, event.option, event.values, event)


def _agent_resolved(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    """The agent's outcome: what policy offers the case, checked and written back like the
    customer's, without the customer's identity checks (the agent answers for those)."""
    assert isinstance(event, ResolvedByAgent)
    if d.case.status is not Status.EXCEPTION:
        return f"the case is {d.case.status.value}, not in exception"
    d.change(agent_touched=True, closed_at=None, reason=None)
    return _outcome(d, compiled, event.option, event.values, event)


def _outcome(
    d: _Draft,
    compiled: CompiledSpec,
    chosen: str,
    given: Mapping[str, Any],
    event: OutcomeSubmitted | ResolvedByAgent,
) -> str | None:
    case, spec = d.case, compiled.spec
    by_agent = isinstance(event, ResolvedByAgent)
    code_verified = by_agent or (
        isinstance(event, OutcomeSubmitted) and event.one_time_code_verified
    )
    facts = policy.Facts(compiled, case.data, case.account)
    offered = {o.kind: o for o in policy.options(compiled, case.data, case.account, facts=facts)}
    option = offered.get(chosen)
    if option is None:
        return f"option {chosen!r} is not offered for this case"
    values = dict(given)
    if option.kind == "confirm_details":
        details = _details(case, values)
        if isinstance(details, str):
            return details
        values = details
        if details["changed"] and not code_verified:
            return "a one-time code is required to change contact details"
    if option.instalments:  # an arrangement: the plan chosen must be one policy offers
        plan = policy.chosen_plan(option, values, d.now)
        if isinstance(plan, str):
            return plan
        assert option.maximum is not None
        values = plan.submission(option.maximum)
    if option.minimum is not None or option.maximum is not None:
        try:
            amount = Decimal(str(values.get("amount", "")))
        except InvalidOperation:
            return "amount must be a number"
        if (option.minimum is not None and amount < option.minimum) or (
            option.maximum is not None and amount > option.maximum
        ):
            return f"amount must be between {option.minimum} and {option.maximum}"
        values["amount"] = str(amount)
    if option.kind == "pay_now":  # paid with a method on file or a new card's token
        method = policy.paid_with(case.account, values)
        if isinstance(method, str):
            return method
        values = {"amount": values["amount"], **method}
    if option.statement_version is not None:  # an attestation: the text shown, accepted
        if values.get("statement_version") != option.statement_version:
            return "the statement was changed; read it again"
        if values.get("accepted") is not True:
            return "the statement must be accepted"
    submission = {"option": chosen, **values}
    if policy.step_up_required(compiled, case.data, case.account, submission, facts=facts) and not (
        code_verified
    ):
        return "a one-time code is required for this action"
    outcome = spec.outcomes[option.outcome]
    method = "agent" if by_agent else "one_time_code" if code_verified else case.identity_level
    evidence = _evidence(outcome.evidence, d, values, method)
    # An agent's outcome has keys of its own: the customer's failed ones may hold the same.
    scope = ("agent", str(case.seq)) if by_agent else ()
    keys = []
    for index, writeback in enumerate(outcome.writebacks):
        key = idempotency_key(case.id, *scope, option.outcome, str(index), writeback.operation)
        keys.append(key)
        payload = {"account_id": case.account_id, "case_id": case.id, **values}
        d.intents.append(
            RequestWriteback(
                idempotency_key=key,
                operation=writeback.operation,
                argument=writeback.argument,
                outcome=option.outcome,
                payload=payload,
            )
        )
    d.change(
        status=Status.WRITING_BACK,
        outcome=option.outcome,
        submission=submission,
        pending_writebacks=tuple(keys),
    )
    d.cancel = True
    d.record(
        "outcome_submitted",
        event.actor,
        event.note if isinstance(event, ResolvedByAgent) else outcome.description,
        outcome=option.outcome,
        option=chosen,
        evidence=evidence,
        writebacks=keys,
    )
    return None


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ZIP = re.compile(r"^\d{5}(-\d{4})?$")


def _details(case: Case, values: dict[str, Any]) -> dict[str, Any] | str:
    """Contact details as submitted, checked and normalised, with what changed; or why not."""
    email = str(values.get("email", "")).strip()
    phone_typed = str(values.get("phone", "")).strip()
    phone = to_e164(phone_typed) if phone_typed else ""
    if email and not _EMAIL.match(email):
        return "the email address is not valid"
    if phone is None:
        return "the phone number is not valid"
    address = {k: str(values.get(k, "")).strip() for k in ("line1", "city", "state", "postal_code")}
    if any(address.values()):
        if not all(address.values()):
            return "the address needs a street, a city, a state and a ZIP code"
        if len(address["state"]) != 2 or not address["state"].isalpha():
            return "the state must be its two-letter code"
        if not _ZIP.match(address["postal_code"]):
            return "the ZIP code must be 5 digits"
        address["state"] = address["state"].upper()
    on_file = {c.channel: c.address for c in case.contacts}
    changed = [
        name
        for name, given, held in (
            ("email", email, on_file.get("email")),
            ("phone", phone, on_file.get("sms")),
        )
        if given and given != held
    ]
    return {"email": email, "phone": phone, **address, "changed": changed}


def _evidence(
    wanted: Sequence[str], d: _Draft, values: dict[str, Any], method: str
) -> dict[str, Any]:
    known: dict[str, Callable[[], Any]] = {
        "identity_level": lambda: d.case.identity_level,
        "identity_method": lambda: method,
        "submitted_at": lambda: d.now.isoformat(),
        "amount": lambda: values.get("amount"),
        "attestation_text_version": lambda: values.get("statement_version"),
    }
    return {name: known[name]() if name in known else values.get(name) for name in wanted}


def _writeback_ok(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, WritebackSucceeded)
    if event.operation_key not in d.case.pending_writebacks:
        return "no such pending writeback"
    pending = tuple(k for k in d.case.pending_writebacks if k != event.operation_key)
    d.change(pending_writebacks=pending)
    d.record(
        "writeback_succeeded",
        "connector",
        "",
        operation_key=event.operation_key,
        reference=event.reference,
    )
    if not pending:
        d.close(Status.RESOLVED, "engine", f"outcome {d.case.outcome} written back")
    return None


def _writeback_failed(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, WritebackFailed)
    if event.operation_key not in d.case.pending_writebacks:
        return "no such pending writeback"
    d.record("writeback_failed", "connector", event.reason, operation_key=event.operation_key)
    _exception(d, compiled, "writeback_failed", event.reason, actor="connector")
    return None


def _backend(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, BackendEvent)
    if event.type not in compiled.spec.trigger.closes_on:
        return f"{event.type} does not close {compiled.spec.workflow} cases"
    if d.case.status is Status.NOT_ENROLLED:  # business as usual resolved it
        d.record(
            "resolved_outside_rollout",
            event.actor,
            f"{event.type} from the system of record (not enrolled: business as usual)",
            event=event.type,
        )
        return None
    if d.case.status not in _ACTIVE:
        d.record("backend_event", event.actor, f"{event.type} noted while writing back")
        return None
    d.close(
        Status.RESOLVED_ELSEWHERE,
        event.actor,
        f"{event.type} from the system of record",
        event=event.type,
    )
    return None


def _opted_out(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, OptedOut)
    if d.case.status not in _ACTIVE:
        d.record(
            "opt_out",
            event.actor,
            "consent withdrawn; the chosen outcome stands",
            channel=event.channel,
        )
        return None
    d.close(Status.OPTED_OUT, event.actor, f"opted out on {event.channel}", channel=event.channel)
    return None


def _disputed(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, Disputed)
    if d.case.status not in _ACTIVE:
        return f"the case is {d.case.status.value}"
    _exception(d, compiled, "disputed", event.reason, actor=event.actor)
    return None


def _reconciled(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, Reconciled)
    for effect in event.duplicated:
        d.record(
            "writeback_duplicated",
            event.actor,
            f"the system of record applied {effect['operation']} {effect['times']} times",
            **effect,
        )
    for effect in event.missing:
        d.record(
            "writeback_missing",
            event.actor,
            f"{effect['operation']} was reported done but the system of record does not hold it",
            **effect,
        )
    found = len(event.duplicated) + len(event.missing)
    d.record(
        "reconciled",
        event.actor,
        "the system of record holds what was written back, once"
        if not found
        else f"{found} difference(s) with the system of record",
        duplicated=len(event.duplicated),
        missing=len(event.missing),
    )
    return None


def _in_exception(d: _Draft) -> str | None:
    if d.case.status is not Status.EXCEPTION:
        return f"the case is {d.case.status.value}, not in exception"
    return None


def _retried(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, WritebackRetried)
    if why := _in_exception(d):
        return why
    unknown = [k for k in event.operation_keys if k not in d.case.pending_writebacks]
    if not event.operation_keys or unknown:
        return f"no such failed writeback: {', '.join(unknown) or '(none given)'}"
    pending = tuple(k for k in d.case.pending_writebacks if k not in event.settled)
    d.change(
        status=Status.WRITING_BACK,
        closed_at=None,
        reason=None,
        agent_touched=True,
        pending_writebacks=pending,
    )
    for key in event.operation_keys:
        d.intents.append(RetryWriteback(idempotency_key=key, round=event.round))
    d.record(
        "writeback_retried",
        event.actor,
        event.note,
        operation_keys=list(event.operation_keys),
        round=event.round,
    )
    return None


def _link_resent(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    """Back to outreach with one message: the first step's template on the agent's channel;
    the identity allowance starts again (the agent spoke to the customer)."""
    assert isinstance(event, LinkResent)
    if why := _in_exception(d):
        return why
    contact = d.case.contact_for(event.channel)
    if contact is None:
        return f"no {event.channel} address with consent"
    steps = compiled.spec.outreach.steps
    template = _template_for(compiled, event.channel)
    if template is None:
        return f"the workflow has no {event.channel} message"
    d.change(
        status=Status.OUTREACH,
        closed_at=None,
        reason=None,
        agent_touched=True,
        identity_failures=0,
        code_failures=0,
        next_step=len(steps),  # the agent's message is the last: no cadence after it
    )
    d.record("link_resent", event.actor, event.note, channel=event.channel)
    key = idempotency_key(d.case.id, "message", "agent", str(d.case.seq), event.channel)
    d.intents.append(
        SendMessage(
            idempotency_key=key,
            channel=event.channel,
            address=contact.address,
            template=template,
            step=-1,
            step_name="agent",
            priority="required",
        )
    )
    d.change(touches=d.case.touches + 1)
    expires = compiled.spec.outreach.expires_after
    d.timers.append(SetTimer(name=EXPIRE, due_at=d.now + expires))
    return None


def _template_for(compiled: CompiledSpec, channel: str) -> str | None:
    """The first outreach template the workflow sends on `channel` (a step's or a fallback's)."""
    for step_ in compiled.spec.outreach.steps:
        if step_.channel == channel:
            return step_.template
        if step_.fallback is not None and step_.fallback.channel == channel:
            return step_.fallback.template
    return None


def _closed_unresolvable(d: _Draft, event: Event, compiled: CompiledSpec) -> str | None:
    assert isinstance(event, ClosedUnresolvable)
    if why := _in_exception(d):
        return why
    d.change(agent_touched=True)
    d.close(Status.UNRESOLVABLE, event.actor, event.note or "closed as unresolvable")
    return None


_HANDLERS: dict[type[Event], Callable[[_Draft, Event, CompiledSpec], str | None]] = {
    Opened: _opened,
    TimerFired: _timer,
    MessageSent: _message_sent,
    MessageDeferred: _message_deferred,
    MessageFailed: _message_failed,
    LinkOpened: _link_opened,
    IdentityChecked: _identity,
    OutcomeSubmitted: _submitted,
    WritebackSucceeded: _writeback_ok,
    WritebackFailed: _writeback_failed,
    BackendEvent: _backend,
    OptedOut: _opted_out,
    Disputed: _disputed,
    Reconciled: _reconciled,
    WritebackRetried: _retried,
    ResolvedByAgent: _agent_resolved,
    LinkResent: _link_resent,
    ClosedUnresolvable: _closed_unresolvable,
}
