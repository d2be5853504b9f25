"""Reconciliation with the system of record: duplicates and losses are found and recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, build
from closeloop.clock import SimClock
from closeloop.connectors.ledger import sor_ledger
from closeloop.engine import Status
from tests.conftest import EXAMPLE, NOW
from tests.integration.test_runtime import ACCOUNT, trigger

FACTS = {"date_of_birth": "1980-02-03", "postal_code": "10001"}


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE])
    built = build(settings, clock=SimClock(NOW))
    built.ledger.add_accounts([{**ACCOUNT, "account_id": f"A{i}"} for i in range(12)])
    yield built
    built.close()


def resolve_all(app: App, accounts: int) -> list[str]:
    """Open a case per account, have each customer update the card, run the work for a day."""
    results = app.runtime.intake([trigger(f"t{i}", f"A{i}") for i in range(accounts)])
    ids = [r.case_id for r in results if r.case_id]
    for case_id in ids:
        app.service.verify_identity(case_id, FACTS, key=f"v-{case_id}")
        app.service.submit(case_id, "update_card", {"token_ref": "tok_1"}, key=f"s-{case_id}")
    clock = app.clock
    assert isinstance(clock, SimClock)
    for _ in range(48):
        app.work()
        clock.advance(timedelta(minutes=30))
    return ids


def history(app: App, case_id: str, kind: str) -> list[dict[str, Any]]:
    with app.store.read() as tx:
        return [dict(e["data"]) for e in tx.history(case_id) if e["kind"] == kind]


def test_a_core_that_keeps_its_keys_reconciles_clean_once(app: App) -> None:
    app.ledger.timeout_rate = 0.3  # retries after timeouts: the key stops a second effect
    (case_id,) = resolve_all(app, 1)
    assert app.runtime.case(case_id).status is Status.RESOLVED
    assert history(app, case_id, "reconciled") == [{"duplicated": 0, "missing": 0}]
    assert app.reconciler.run(force=True) == 0  # once per case


def test_a_core_that_ignores_keys_is_caught_and_the_rollout_counts_it(app: App) -> None:
    app.ledger.timeout_rate = 0.5  # half the calls time out after the core committed
    app.ledger.honours_keys = False  # and a retry is applied again
    ids = resolve_all(app, 12)
    assert app.ledger.duplicate_effects() > 0
    doubled = {c for c in ids if history(app, c, "writeback_duplicated")}
    found_all = sum(len(history(app, c, "writeback_duplicated")) for c in ids)
    assert found_all == app.ledger.duplicate_effects()  # each (case, operation) applied twice
    found = history(app, sorted(doubled)[0], "writeback_duplicated")[0]
    assert found["times"] >= 2 and len(found["references"]) == found["times"]
    with app.store.read() as tx:
        tallies = tx.rollout_tallies("failed_payment", NOW, NOW + timedelta(days=2))
    assert tallies["enrolled"]["duplicate_writebacks"] == len(doubled)


def test_an_effect_the_core_lost_is_missing(app: App) -> None:
    (case_id,) = resolve_all(app, 1)
    assert history(app, case_id, "reconciled") == [{"duplicated": 0, "missing": 0}]
    (other,) = [r.case_id for r in app.runtime.intake([trigger("t-late", "A5")])]
    assert other is not None
    app.service.verify_identity(other, FACTS, key="v-late")
    app.service.submit(other, "update_card", {"token_ref": "tok_2"}, key="s-late")
    app.work()
    with app.ledger.engine.begin() as c:
        c.execute(
            sa.delete(sor_ledger).where(
                sor_ledger.c.case_id == other, sor_ledger.c.operation == "add_note"
            )
        )
    clock = app.clock
    assert isinstance(clock, SimClock)
    clock.advance(timedelta(hours=1))
    app.work()
    (lost,) = history(app, other, "writeback_missing")
    assert lost["operation"] == "add_note"
    assert history(app, other, "reconciled") == [{"duplicated": 0, "missing": 1}]


def test_a_core_that_cannot_answer_is_asked_again_and_no_case_is_skipped(app: App) -> None:
    app.reconciler.run(force=True)  # the first round reads everything: nothing yet
    ledger = app.ledger
    effects = ledger.effects

    def down(case_id: str, account_id: str = "") -> list[Any]:
        raise OSError("the core is down")

    ledger.effects = down  # type: ignore[method-assign]
    ids = resolve_all(app, 3)  # every round while the core is down reconciles nothing
    assert all(not history(app, c, "reconciled") for c in ids)
    ledger.effects = effects  # type: ignore[method-assign]
    assert app.reconciler.run(force=True) == 3  # the window it could not read, read again
    assert all(history(app, c, "reconciled") for c in ids)
