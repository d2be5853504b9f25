"""The engine as a pure function, driven with in-memory fakes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from closeloop.engine import (
    CADENCE,
    EXPIRE,
    BackendEvent,
    Case,
    ClosedUnresolvable,
    Decision,
    Disputed,
    IdentityChecked,
    LinkOpened,
    LinkResent,
    MessageFailed,
    Opened,
    OpenException,
    OutcomeSubmitted,
    RequestWriteback,
    ResolvedByAgent,
    RetryWriteback,
    SendMessage,
    Status,
    TimerFired,
    WritebackFailed,
    WritebackRetried,
    WritebackSucceeded,
    step,
)
from closeloop.spec import CompiledSpec
from closeloop.testing import account, case_for
from tests.conftest import NOW

DATA = {"account_id": "A1", "amount_due": "120.50", "decline_code": "51", "due_date": "2026-03-01"}


def opened(compiled: CompiledSpec, **kw: object) -> Decision:
    acct = account("A1", **kw)  # type: ignore[arg-type]
    return step(case_for(compiled, DATA, acct, now=NOW), Opened(), compiled, NOW)


def verified(compiled: CompiledSpec) -> Case:
    case = opened(compiled).case
    case = step(case, LinkOpened(channel="email"), compiled, NOW).case
    return step(case, IdentityChecked(passed=True, method="known_facts"), compiled, NOW).case


def test_open_sends_first_email_and_sets_cadence_and_expiry(compiled: CompiledSpec) -> None:
    d = opened(compiled)
    assert d.case.status is Status.OUTREACH
    (message,) = d.intents
    assert isinstance(message, SendMessage) and message.channel == "email"
    timers = {t.name: t.due_at for t in d.timers}
    assert timers == {EXPIRE: NOW + timedelta(days=8), CADENCE: NOW + timedelta(hours=24)}
    assert [e.kind for e in d.history] == ["opened", "message_requested"]
    assert d.case.seq == 2


def test_legal_hold_is_ineligible_with_the_rule_reason(compiled: CompiledSpec) -> None:
    d = opened(compiled, flags=["litigation"])
    assert d.case.status is Status.INELIGIBLE and d.case.cohort == "ineligible"
    assert d.case.reason == "account under legal hold"
    assert d.history[-1].data["rule"] == "no_legal_hold"
    assert not d.intents and not d.timers


def test_outside_the_cohort_is_not_enrolled(compiled: CompiledSpec) -> None:
    case = case_for(compiled, DATA, account("A1"), now=NOW)
    d = step(case, Opened(enrolled=False, cohort="control"), compiled, NOW)
    assert d.case.status is Status.NOT_ENROLLED and d.case.cohort == "control"


def test_quiet_hours_defer_the_first_message(compiled: CompiledSpec) -> None:
    night = NOW.replace(hour=4)  # 23:00 in New York
    case = case_for(compiled, DATA, account("A1"), now=night)
    d = step(case, Opened(), compiled, night)
    assert not d.intents
    cadence = next(t for t in d.timers if t.name == CADENCE)
    assert cadence.due_at == NOW.replace(hour=13)  # 08:00 New York (EST)
    assert d.history[-1].kind == "step_deferred"


def test_reminder_is_skipped_when_the_link_was_opened(compiled: CompiledSpec) -> None:
    case = step(opened(compiled).case, LinkOpened(channel="email"), compiled, NOW).case
    later = NOW + timedelta(hours=24)
    d = step(case, TimerFired(name=CADENCE), compiled, later)
    assert [e.kind for e in d.history] == ["step_skipped"]
    assert next(t for t in d.timers if t.name == CADENCE).due_at == NOW + timedelta(hours=72)


def test_no_consent_for_a_channel_falls_back_or_skips(compiled: CompiledSpec) -> None:
    case = case_for(compiled, DATA, account("A1", channels=("email",)), now=NOW)
    case = step(case, Opened(), compiled, NOW).case
    d = step(case, TimerFired(name=CADENCE), compiled, NOW + timedelta(hours=24))
    assert d.history[0].reason == "no address with consent for sms"
    d = step(d.case, TimerFired(name=CADENCE), compiled, NOW + timedelta(hours=72))
    (message,) = d.intents
    assert isinstance(message, SendMessage)
    assert (message.channel, message.template) == ("email", "declined_card_last_email")


def test_undeliverable_whatsapp_falls_back_to_email(compiled: CompiledSpec) -> None:
    case = opened(compiled).case.evolve(next_step=3)
    d = step(
        case,
        MessageFailed(message_id="m", channel="whatsapp", step=2, reason="blocked"),
        compiled,
        NOW,
    )
    (message,) = d.intents
    assert isinstance(message, SendMessage) and message.channel == "email"


def test_expiry_closes_the_case_and_cancels_timers(compiled: CompiledSpec) -> None:
    d = step(opened(compiled).case, TimerFired(name=EXPIRE), compiled, NOW + timedelta(days=8))
    assert d.case.status is Status.EXPIRED and d.cancel_timers and d.case.closed_at


def test_identity_locks_after_max_attempts(compiled: CompiledSpec) -> None:
    case = opened(compiled).case
    for _ in range(3):
        d = step(case, IdentityChecked(passed=False, method="known_facts"), compiled, NOW)
        case = d.case
    assert case.status is Status.EXCEPTION
    (exc,) = [i for i in d.intents if isinstance(i, OpenException)]
    assert (exc.reason, exc.queue, exc.due_at) == (
        "identity_locked",
        "fraud_review",
        NOW + timedelta(hours=4),
    )


def test_wrong_codes_have_their_own_allowance(compiled: CompiledSpec) -> None:
    case = verified(compiled)
    facts = IdentityChecked(passed=False, method="known_facts")
    code = IdentityChecked(passed=False, method="one_time_code", level="one_time_code")
    case = step(case, facts, compiled, NOW).case
    for wrong in range(1, 5):  # four wrong codes and one wrong fact: still open
        case = step(case, code, compiled, NOW).case
        assert (case.code_failures, case.identity_failures) == (wrong, 1)
        assert case.status is not Status.EXCEPTION
    locked = step(case, code, compiled, NOW)
    assert locked.case.status is Status.EXCEPTION and locked.case.code_failures == 5
    assert "one_time_code" in locked.history[-1].reason or any(
        "one_time_code" in h.reason for h in locked.history
    )


def test_submission_needs_identity_and_bounds(compiled: CompiledSpec) -> None:
    case = opened(compiled).case
    assert (
        step(
            case,
            OutcomeSubmitted(option="pay_now", values={"amount": "50", "method": "pm_1"}),
            compiled,
            NOW,
        ).rejected
        == "identity must be confirmed first"
    )
    case = verified(compiled)
    low = step(
        case,
        OutcomeSubmitted(option="pay_now", values={"amount": "10", "method": "pm_1"}),
        compiled,
        NOW,
    )
    assert low.rejected == "amount must be between 30.13 and 120.50"
    assert low.case == case and not low.history


def test_paid_outcome_requests_each_writeback_once_then_resolves(compiled: CompiledSpec) -> None:
    case = verified(compiled)
    d = step(
        case,
        OutcomeSubmitted(option="pay_now", values={"amount": "120.50", "method": "pm_1"}),
        compiled,
        NOW,
    )
    writebacks = [i for i in d.intents if isinstance(i, RequestWriteback)]
    assert [w.operation for w in writebacks] == ["post_payment", "clear_flag", "add_note"]
    assert writebacks[1].argument == "past_due"
    assert d.case.status is Status.WRITING_BACK and d.cancel_timers
    assert d.history[-1].data["evidence"]["amount"] == "120.50"
    again = step(
        case,
        OutcomeSubmitted(option="pay_now", values={"amount": "120.50", "method": "pm_1"}),
        compiled,
        NOW,
    )
    assert [w.idempotency_key for w in writebacks] == [
        w.idempotency_key for w in again.intents if isinstance(w, RequestWriteback)
    ]
    case = d.case
    for w in writebacks:
        case = step(case, WritebackSucceeded(operation_key=w.idempotency_key), compiled, NOW).case
    assert case.status is Status.RESOLVED


def test_large_payment_needs_a_one_time_code(compiled: CompiledSpec) -> None:
    data = {**DATA, "amount_due": "900.00"}
    case = case_for(compiled, data, account("A1"), now=NOW)
    case = step(case, Opened(), compiled, NOW).case
    case = step(case, IdentityChecked(passed=True, method="known_facts"), compiled, NOW).case
    no_code = step(
        case,
        OutcomeSubmitted(option="pay_now", values={"amount": "600", "method": "pm_1"}),
        compiled,
        NOW,
    )
    assert no_code.rejected == "a one-time code is required for this action"
    ok = step(
        case,
        OutcomeSubmitted(
            option="pay_now",
            values={"amount": "600", "method": "pm_1"},
            one_time_code_verified=True,
        ),
        compiled,
        NOW,
    )
    assert ok.case.status is Status.WRITING_BACK


def test_failed_writeback_opens_an_exception(compiled: CompiledSpec) -> None:
    d = step(verified(compiled), OutcomeSubmitted(option="update_card"), compiled, NOW)
    key = next(i for i in d.intents if isinstance(i, RequestWriteback)).idempotency_key
    d = step(
        d.case, WritebackFailed(operation_key=key, reason="422 account is closed"), compiled, NOW
    )
    assert d.case.status is Status.EXCEPTION
    assert any(isinstance(i, OpenException) and i.queue == "billing_ops" for i in d.intents)


def in_exception(compiled: CompiledSpec) -> tuple[Case, list[str]]:
    """A paid case whose first writeback failed while the other two succeeded."""
    d = step(
        verified(compiled),
        OutcomeSubmitted(option="pay_now", values={"amount": "120.50", "method": "pm_1"}),
        compiled,
        NOW,
    )
    keys = [i.idempotency_key for i in d.intents if isinstance(i, RequestWriteback)]
    case = step(d.case, WritebackSucceeded(operation_key=keys[1]), compiled, NOW).case
    case = step(case, WritebackFailed(operation_key=keys[0], reason="timeout"), compiled, NOW).case
    assert case.status is Status.EXCEPTION
    return case, keys


def test_a_case_in_exception_takes_only_what_an_agent_does(compiled: CompiledSpec) -> None:
    case, keys = in_exception(compiled)
    late = step(case, WritebackSucceeded(operation_key=keys[2]), compiled, NOW)
    assert late.rejected  # the third came while an agent holds the case: the outbox says so
    live = opened(compiled).case
    for action in (
        WritebackRetried(operation_keys=(keys[0],)),
        ClosedUnresolvable(note="x"),
        LinkResent(channel="sms"),
        ResolvedByAgent(option="pay_now"),
    ):
        assert "not in exception" in (step(live, action, compiled, NOW).rejected or "")
    unknown = step(case, WritebackRetried(operation_keys=("nope",)), compiled, NOW)
    assert unknown.rejected and "no such failed writeback" in unknown.rejected


def test_an_agents_retry_runs_the_failed_keys_again_and_settles_the_rest(
    compiled: CompiledSpec,
) -> None:
    case, keys = in_exception(compiled)
    retry = WritebackRetried(
        operation_keys=(keys[0],), settled=(keys[2],), actor="staff:ana", note="core fixed"
    )
    d = step(case, retry, compiled, NOW)
    assert d.case.status is Status.WRITING_BACK and d.case.closed_at is None
    assert d.intents == (RetryWriteback(idempotency_key=keys[0], round=1),)
    assert d.case.pending_writebacks == (keys[0],)
    assert (d.history[-1].kind, d.history[-1].actor) == ("writeback_retried", "staff:ana")
    done = step(d.case, WritebackSucceeded(operation_key=keys[0]), compiled, NOW)
    assert done.case.status is Status.RESOLVED


def test_an_agents_outcome_has_keys_of_its_own_and_no_identity_check(
    compiled: CompiledSpec,
) -> None:
    case, keys = in_exception(compiled)
    values = {"amount": "120.50", "method": "pm_1"}
    d = step(
        case,
        ResolvedByAgent(option="pay_now", values=values, actor="staff:ana", note="paid by phone"),
        compiled,
        NOW,
    )
    fresh = [i.idempotency_key for i in d.intents if isinstance(i, RequestWriteback)]
    assert len(fresh) == 3 and not set(fresh) & set(keys)
    assert d.case.status is Status.WRITING_BACK and d.case.agent_touched
    assert d.history[-1].reason == "paid by phone"
    too_much = step(
        case, ResolvedByAgent(option="pay_now", values={**values, "amount": "9999"}), compiled, NOW
    )
    assert too_much.rejected and "amount must be between" in too_much.rejected


def test_a_new_link_reopens_the_case_and_a_close_ends_it(compiled: CompiledSpec) -> None:
    case, _ = in_exception(compiled)
    d = step(case, LinkResent(channel="sms", actor="staff:ana"), compiled, NOW)
    (message,) = d.intents
    assert isinstance(message, SendMessage) and message.channel == "sms"
    assert d.case.status is Status.OUTREACH and d.case.identity_failures == 0
    assert {t.name for t in d.timers} == {EXPIRE}
    assert step(case, LinkResent(channel="fax"), compiled, NOW).rejected
    closed = step(case, ClosedUnresolvable(note="deceased"), compiled, NOW)
    assert closed.case.status is Status.UNRESOLVABLE and closed.case.reason == "deceased"
    assert step(closed.case, LinkResent(channel="sms"), compiled, NOW).rejected


def test_payment_posted_elsewhere_closes_the_case(compiled: CompiledSpec) -> None:
    d = step(opened(compiled).case, BackendEvent(type="payment.posted"), compiled, NOW)
    assert d.case.status is Status.RESOLVED_ELSEWHERE
    assert step(opened(compiled).case, BackendEvent(type="card.expired"), compiled, NOW).rejected


def test_dispute_goes_to_its_queue(compiled: CompiledSpec) -> None:
    d = step(opened(compiled).case, Disputed(reason="not mine"), compiled, NOW)
    assert d.case.status is Status.EXCEPTION and d.case.reason == "disputed: not mine"


def test_a_closed_case_rejects_everything(compiled: CompiledSpec) -> None:
    closed = opened(compiled, flags=["bankruptcy"]).case
    for event in (
        TimerFired(name=CADENCE),
        LinkOpened(channel="sms"),
        BackendEvent(type="payment.posted"),
    ):
        d = step(closed, event, compiled, NOW)
        assert d.rejected and d.case == closed and not d.history


@pytest.mark.parametrize("flags", [[], ["litigation"]])
def test_the_engine_is_deterministic(compiled: CompiledSpec, flags: list[str]) -> None:
    assert opened(compiled, flags=flags) == opened(compiled, flags=flags)


def test_evolve_and_restore_refuse_unknown_fields(compiled: CompiledSpec) -> None:
    case = case_for(compiled, DATA, account("A1"), now=NOW)
    moved = case.evolve(next_step=2, touches=1)
    assert (moved.next_step, moved.touches, case.next_step) == (2, 1, 0)
    with pytest.raises(TypeError, match="no field"):
        case.evolve(nxt_step=2)
    stored = {"data": dict(case.data), "account": dict(case.account), "contacts": case.contacts}
    columns = {
        name: getattr(case, name)
        for name in (
            "id",
            "workflow",
            "trigger_id",
            "account_id",
            "status",
            "opened_at",
            "time_zone",
        )
    }
    restored = Case.restore(stored, updated_at=case.updated_at, **columns)
    assert restored == case  # fields missing from old rows take their defaults
    with pytest.raises(TypeError, match="lacks opened_at"):
        Case.restore(stored, **{k: v for k, v in columns.items() if k != "opened_at"})


def test_a_plan_splits_to_the_cent_and_keeps_its_day_of_the_month() -> None:
    from datetime import date
    from decimal import Decimal

    from closeloop.policy import schedule

    monthly = schedule(Decimal("100.00"), 3, "monthly", date(2026, 1, 31))
    assert [i.due for i in monthly] == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31)]
    assert [i.amount for i in monthly] == [Decimal("33.33"), Decimal("33.33"), Decimal("33.34")]
    fortnightly = schedule(Decimal("50"), 2, "fortnightly", date(2026, 12, 25))
    assert [i.due for i in fortnightly] == [date(2026, 12, 25), date(2027, 1, 8)]
    assert sum(i.amount for i in fortnightly) == Decimal("50")


def test_only_plans_whose_instalments_reach_the_floor_are_offered(compiled: CompiledSpec) -> None:
    from closeloop import policy

    small = case_for(
        compiled,
        {"account_id": "A1", "amount_due": "50.00", "decline_code": "51", "due_date": "2026-03-01"},
        account("A1"),
        now=NOW,
    )
    (plan,) = [o for o in policy.options(compiled, small.data, small.account) if o.instalments]
    assert plan.instalments == (2,)  # 50 / 3 is under the 20.00 floor
    tiny = case_for(
        compiled,
        {"account_id": "A1", "amount_due": "30.00", "decline_code": "51", "due_date": "2026-03-01"},
        account("A1"),
        now=NOW,
    )
    assert not [o for o in policy.options(compiled, tiny.data, tiny.account) if o.instalments]


def test_a_payment_names_a_method_on_file_or_a_new_cards_token(compiled: CompiledSpec) -> None:
    case = verified(compiled)

    def pay(**values: str) -> Decision:
        submitted = OutcomeSubmitted(option="pay_now", values={"amount": "100", **values})
        return step(case, submitted, compiled, NOW)

    assert pay().rejected == "choose a payment method on file or a new card"
    assert pay(method="pm_other").rejected == "that payment method is not on file for this account"
    assert pay(method="pm_1", token_ref="tok_1").rejected == (
        "choose a payment method on file or a new card, not both"
    )
    on_file, new_card = pay(method="pm_1"), pay(token_ref="tok_abc")
    posted = next(i for i in on_file.intents if isinstance(i, RequestWriteback))
    assert posted.payload["method"] == "pm_1" and "token_ref" not in posted.payload
    assert on_file.case.submission == {"option": "pay_now", "amount": "100", "method": "pm_1"}
    posted = next(i for i in new_card.intents if isinstance(i, RequestWriteback))
    assert posted.payload["token_ref"] == "tok_abc" and "method" not in posted.payload
