"""The control group's outcomes are recorded, and a stage's tallies are read from the store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from closeloop.app import App, Settings, TriggerIn, build
from closeloop.clock import SimClock
from closeloop.engine import Status
from closeloop.rollout import in_cohort
from tests.conftest import EXAMPLE, NOW
from tests.integration.test_runtime import ACCOUNT, trigger
from tests.integration.test_writebacks import paid

ACCOUNTS = [f"A{i}" for i in range(1, 41)]


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[App]:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE], cohort_percent=50
    )
    built = build(settings, clock=SimClock(NOW))
    built.ledger.add_accounts([{**ACCOUNT, "account_id": a} for a in ACCOUNTS])
    yield built
    built.close()


def posted(ident: str, account: str) -> TriggerIn:
    return TriggerIn(id=ident, type="payment.posted", data={"account_id": account})


def test_a_payment_posted_for_a_case_left_out_is_the_controls_outcome(app: App) -> None:
    results = app.runtime.intake([trigger(f"t-{a}", a) for a in ACCOUNTS])
    control = [a for a in ACCOUNTS if not in_cohort("failed_payment", a, 50)]
    enrolled = [a for a in ACCOUNTS if a not in control]
    assert control and enrolled
    by_account = {a: r.case_id for a, r in zip(ACCOUNTS, results, strict=True)}
    assert app.runtime.case(by_account[control[0]]).status is Status.NOT_ENROLLED
    (result,) = app.runtime.intake([posted("p1", control[0])])
    assert result.closed == 0  # nothing live was closed: the control case only notes it
    case_id = by_account[control[0]]
    with app.store.read() as tx:
        kinds = [h["kind"] for h in tx.history(case_id)]
    assert kinds[-1] == "resolved_outside_rollout"
    assert app.runtime.case(case_id).status is Status.NOT_ENROLLED
    paid(app, enrolled[0], "t-again")  # an enrolled customer pays in the mini-app
    app.dispatcher.run_writebacks()
    app.runtime.intake([posted("p2", enrolled[1])])  # another pays elsewhere
    clock = app.clock
    assert isinstance(clock, SimClock)
    clock.advance(timedelta(days=30))  # past the workflow's expiry: no longer comparable
    app.runtime.intake([posted("p3", control[1])])
    with app.store.read() as tx:
        tallies = tx.rollout_tallies("failed_payment", NOW - timedelta(days=1), clock.now())
    assert tallies["control"]["cases"] == len(control)
    assert tallies["control"]["resolved"] == 1 and tallies["control"]["completed"] == 0
    assert tallies["enrolled"]["cases"] == len(enrolled) + 1
    assert tallies["enrolled"]["resolved"] == 2  # in the message, and elsewhere
    assert tallies["enrolled"]["completed"] == 1
    assert tallies["enrolled"]["identity_checks"] == 1
