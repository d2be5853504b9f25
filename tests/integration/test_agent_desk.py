"""The agent's desk against the reference core over HTTP: claims, retries, resolutions,
new links and closes, each in the case's history under the agent's name."""

from __future__ import annotations

from datetime import timedelta

import pytest

from closeloop.app import App
from closeloop.app.dispatch import writeback_state
from closeloop.app.links import token_from_url
from closeloop.app.staff import Principal
from closeloop.clock import SimClock
from closeloop.connectors.reference_core import ReferenceCore
from closeloop.engine import Status
from closeloop.errors import InputError, StateError
from tests.integration.test_runtime import trigger
from tests.integration.test_writebacks import clock, faults, paid, world

__all__ = ["clock", "world"]  # the fixtures, shared with the writeback tests

ANA = Principal(name="ana", role="agent", via="password")
BOB = Principal(name="bob", role="agent", via="password")
ADMIN = Principal(name="root", role="admin", via="password")
WRONG = {"date_of_birth": "1999-09-09", "postal_code": "99999"}


def locked(app: App, ident: str, account: str = "A1") -> str:
    """A case whose customer failed the identity check until it went to an agent."""
    (result,) = app.runtime.intake([trigger(ident, account=account)])
    assert result.case_id is not None
    app.dispatcher.send_messages()
    visit = app.service.redeem(token_from_url(app.service.issue_link(result.case_id)), key=ident)
    for attempt in range(10):
        if app.runtime.case(result.case_id).status is Status.EXCEPTION:
            break
        app.service.verify_identity(visit.case_id, WRONG, key=f"{ident}-{attempt}")
    assert app.runtime.case(result.case_id).status is Status.EXCEPTION
    return result.case_id


def exception_of(app: App, case_id: str) -> dict[str, object]:
    (row,) = [r for r in app.desk.queue() if r["case_id"] == case_id]
    return row


def test_one_agent_claims_retries_and_the_core_applies_each_effect_once(
    world: tuple[App, ReferenceCore, str], clock: SimClock
) -> None:
    app, core, url = world
    case_id = paid(app, "A1", "t1")
    faults(url, malformed=1.0)  # every effect is made, every answer is garbage
    for _ in range(30):
        clock.advance(timedelta(hours=1))
        app.dispatcher.run_writebacks()
    assert app.runtime.case(case_id).status is Status.EXCEPTION
    row = exception_of(app, case_id)
    assert row["reason"] == "writeback_failed" and row["claimed_by"] is None
    with pytest.raises(StateError, match="claim the case first"):
        app.desk.retry(case_id, ANA)
    app.desk.claim(str(row["id"]), ANA)
    with pytest.raises(StateError, match="ana is working on it"):
        app.desk.claim(str(row["id"]), BOB)
    with pytest.raises(StateError, match="ana is working on it"):
        app.desk.retry(case_id, BOB)
    with pytest.raises(StateError):
        app.desk.release(str(row["id"]), BOB)  # only ana, or an admin, lets go of it

    faults(url)  # the core answers properly again
    app.desk.retry(case_id, ANA, "core fixed its gateway; retrying")
    assert app.runtime.case(case_id).status is Status.WRITING_BACK
    assert app.desk.queue() == []
    app.dispatcher.run_writebacks()
    case = app.runtime.case(case_id)
    assert case.status is Status.RESOLVED
    with app.store.read() as tx:
        assert {writeback_state(r) for r in tx.writebacks(case_id)} == {"succeeded"}
        history = tx.history(case_id)
        (closed,) = tx.case_exceptions(case_id)
    (retried,) = [h for h in history if h["kind"] == "writeback_retried"]
    assert retried["actor"] == "staff:ana" and retried["reason"].startswith("core fixed")
    assert closed["status"] == "closed" and closed["closed_by"] == "ana"
    assert closed["action"] == "retry"
    ledger = core.ledger()  # the same keys: what the garbled answers made is not made again
    assert ledger["effects"] == 3 and ledger["duplicate_keys"] == 0


def test_an_agent_resolves_a_locked_case_and_the_outcome_is_written_back(
    world: tuple[App, ReferenceCore, str],
) -> None:
    app, core, _ = world
    case_id = locked(app, "t2")
    row = exception_of(app, case_id)
    assert row["reason"] == "identity_locked"
    app.desk.claim(str(row["id"]), ANA)
    with pytest.raises(InputError, match="note is required"):
        app.desk.resolve(case_id, ANA, "pay_now", {"amount": "120.50", "method": "pm_1"}, "")
    with pytest.raises(StateError, match="amount must be between"):
        app.desk.resolve(case_id, ANA, "pay_now", {"amount": "9999", "method": "pm_1"}, "x")
    app.desk.resolve(
        case_id,
        ANA,
        "pay_now",
        {"amount": "120.50", "method": "pm_1"},
        "customer called, verified by phone, paid in full",
    )
    app.dispatcher.run_writebacks()
    case = app.runtime.case(case_id)
    assert case.status is Status.RESOLVED and case.agent_touched
    with app.store.read() as tx:
        history = tx.history(case_id)
    (submitted,) = [h for h in history if h["kind"] == "outcome_submitted"]
    assert submitted["actor"] == "staff:ana" and "paid in full" in submitted["reason"]
    assert submitted["data"]["evidence"].get("identity_method", "agent") == "agent"
    assert core.ledger()["effects"] >= 1


def test_a_new_link_reopens_the_case_and_a_close_ends_it(
    world: tuple[App, ReferenceCore, str],
) -> None:
    app, _, _ = world
    first, second = locked(app, "t3"), locked(app, "t4", account="A2")
    for case_id in (first, second):
        app.desk.claim(str(exception_of(app, case_id)["id"]), ANA)
    with pytest.raises(StateError, match="no fax address"):
        app.desk.new_link(first, ANA, "fax")
    app.desk.new_link(first, ANA, "sms", "customer asked for a new link by phone")
    case = app.runtime.case(first)
    assert case.status is Status.OUTREACH and case.identity_failures == 0
    sent = app.dispatcher.send_messages()
    assert sent >= 1
    assert any(m["case_id"] == first for m in app.sink.delivered_after(0))
    app.desk.close(second, ANA, "account in collections; no contact allowed")
    assert app.runtime.case(second).status is Status.UNRESOLVABLE
    with pytest.raises(StateError, match="not in the exception queue"):
        app.desk.close(second, ANA, "again")
    # An admin may release another agent's claim; a case back in the queue can be claimed.
    third = locked(app, "t5")
    row = exception_of(app, third)
    app.desk.claim(str(row["id"]), BOB)
    app.desk.release(str(row["id"]), ADMIN)
    app.desk.claim(str(row["id"]), ANA)
