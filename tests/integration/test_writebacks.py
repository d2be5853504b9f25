"""Writebacks to the reference core over HTTP through an outage: held, never doubled or lost."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, build
from closeloop.app.breaker import CircuitBreaker
from closeloop.app.dispatch import writeback_state
from closeloop.app.links import token_from_url
from closeloop.clock import SimClock
from closeloop.connectors.mapping import load_mapping
from closeloop.connectors.reference_core import ReferenceCore, core_accounts
from closeloop.connectors.rest import RestConnector
from closeloop.engine import Status
from closeloop.store.database import create_engine
from closeloop.store.tables import outbox
from tests.conftest import EXAMPLE, NOW, ROOT
from tests.integration.test_runtime import ACCOUNT, trigger
from tests.servers import Served, free_port

API, ADMIN = "wb-api-key", "wb-admin-key"


@pytest.fixture
def clock() -> SimClock:
    return SimClock(NOW)


@pytest.fixture
def world(
    database_url: str, tmp_path: Path, clock: SimClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[App, ReferenceCore, str]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'core.db'}")
    core = ReferenceCore(engine, api_key=API, admin_key=ADMIN)
    core.add_accounts([ACCOUNT, {**ACCOUNT, "account_id": "A2"}])
    served = Served(core.app, free_port())
    monkeypatch.setenv("CLOSELOOP_CORE_API_KEY", API)
    text = (ROOT / "examples" / "connectors" / "reference_core.yaml").read_text()
    rest = RestConnector(load_mapping(text.replace("http://127.0.0.1:8092", served.url)))
    app = build(
        Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE]), clock=clock
    )
    app.ledger.add_accounts([ACCOUNT, {**ACCOUNT, "account_id": "A2"}])
    app.dispatcher.connector = rest  # writebacks go to the reference core over HTTP
    app.dispatcher.breaker = CircuitBreaker(failures=2, open_for=timedelta(minutes=5))
    yield app, core, served.url
    app.close()
    rest.close()
    served.stop()
    engine.dispose()


def faults(url: str, **given: Any) -> None:
    answer = httpx.put(
        f"{url}/_admin/faults", json=given, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code == 200, answer.text


def paid(app: App, account: str, ident: str) -> str:
    """A case whose customer paid in the mini-app: its writebacks wait in the outbox."""
    (result,) = app.runtime.intake([trigger(ident, account=account)])
    assert result.case_id is not None
    app.dispatcher.send_messages()
    link = app.service.issue_link(result.case_id, "sms")
    visit = app.service.redeem(token_from_url(link), key=f"{ident}-open")
    facts = {"date_of_birth": "1980-02-03", "postal_code": "10001"}
    assert app.service.verify_identity(visit.case_id, facts, key=f"{ident}-id")
    values = {"amount": "120.50", "method": "pm_1"}
    app.service.submit(visit.case_id, "pay_now", values, key=f"{ident}-pay")
    return result.case_id


def attempts(app: App) -> list[int]:
    with app.store.read() as tx:
        rows = tx.c.execute(sa.select(outbox.c.attempts).where(outbox.c.kind == "writeback"))
        return [r[0] for r in rows]


def test_an_outage_opens_the_breaker_and_nothing_is_lost_or_doubled(
    world: tuple[App, ReferenceCore, str], clock: SimClock
) -> None:
    app, core, url = world
    case_id = paid(app, "A1", "t1")
    faults(url, down=True)
    app.dispatcher.run_writebacks()
    # The first failure is an attempt; the second opens the breaker and waits for the
    # core, like the third, held back: neither uses up an attempt.
    assert sorted(attempts(app)) == [0, 0, 1]
    with app.store.read() as tx:
        assert tx.connector_events() == {"breaker_opened": 1}
    clock.advance(timedelta(hours=2))  # due again; the probe fails: open again, longer
    app.dispatcher.run_writebacks()
    assert app.dispatcher.breaker.openings == 1 and sum(attempts(app)) == 1
    faults(url)  # the core is back
    for _ in range(6):
        clock.advance(timedelta(hours=1))
        app.dispatcher.run_writebacks()
    assert app.runtime.case(case_id).status is Status.RESOLVED
    assert core.ledger() == {"effects": 3, "duplicate_keys": 0, "duplicate_outcomes": 0}


def test_an_outage_longer_than_the_attempts_allow_loses_nothing(
    world: tuple[App, ReferenceCore, str], clock: SimClock
) -> None:
    """Probing a down core uses up no attempts: the writeback lands when the core is back."""
    app, core, url = world
    case_id = paid(app, "A1", "t1")
    faults(url, down=True)
    for _ in range(12):  # twice the attempts a writeback has, each hour a probe that fails
        app.dispatcher.run_writebacks()
        clock.advance(timedelta(hours=1))
    assert app.runtime.case(case_id).status is Status.WRITING_BACK
    assert max(attempts(app)) < app.dispatcher.retry.max_attempts
    faults(url)
    for _ in range(4):
        clock.advance(timedelta(hours=1))
        app.dispatcher.run_writebacks()
    assert app.runtime.case(case_id).status is Status.RESOLVED
    assert core.ledger() == {"effects": 3, "duplicate_keys": 0, "duplicate_outcomes": 0}


def test_writebacks_held_past_their_deadline_go_to_an_agent(
    world: tuple[App, ReferenceCore, str], clock: SimClock
) -> None:
    app, core, url = world
    app.dispatcher.breaker = CircuitBreaker(
        failures=2, open_for=timedelta(hours=12), longest=timedelta(days=2)
    )
    case_id = paid(app, "A2", "t2")
    faults(url, down=True)
    for _ in range(40):  # more than a day of an outage, probed twice
        clock.advance(timedelta(hours=1))
        app.dispatcher.run_writebacks()
    case = app.runtime.case(case_id)
    assert case.status is Status.EXCEPTION
    assert "not written back within 1d: the system of record is unavailable" in (case.reason or "")
    with app.store.read() as tx:
        rows = tx.c.execute(
            sa.select(outbox.c.status, outbox.c.attempts, outbox.c.result).where(
                outbox.c.kind == "writeback"
            )
        ).all()
    assert {status for status, _, _ in rows} == {"failed"}
    assert all("the system of record is unavailable" in str(result) for _, _, result in rows)
    assert max(n for _, n, _ in rows) < 6  # held, not retried to exhaustion
    assert core.ledger()["effects"] == 0


def test_an_agent_sees_which_writebacks_succeeded_failed_or_are_unknown(
    world: tuple[App, ReferenceCore, str], clock: SimClock
) -> None:
    """Refused by the core: failed (nothing made). Never answered cleanly: unknown."""
    app, core, url = world
    with core.engine.begin() as c:  # the core closed account A2 meanwhile
        closed = {**ACCOUNT, "account_id": "A2", "facts": {**ACCOUNT["facts"], "flags": ["closed"]}}
        c.execute(
            core_accounts.update().where(core_accounts.c.account_id == "A2").values(record=closed)
        )
    refused = paid(app, "A2", "t2")
    app.dispatcher.run_writebacks()
    with app.store.read() as tx:
        states = {writeback_state(r) for r in tx.writebacks(refused)}
    assert states == {"failed"} and app.runtime.case(refused).status is Status.EXCEPTION
    broken = paid(app, "A1", "t1")
    faults(url, malformed=1.0)  # every effect is made; every answer is garbage
    for _ in range(30):
        clock.advance(timedelta(hours=1))
        app.dispatcher.run_writebacks()
    with app.store.read() as tx:
        rows = tx.writebacks(broken)
    assert [writeback_state(r) for r in rows] == ["unknown"] * 3
    assert app.runtime.case(broken).status is Status.EXCEPTION
    ledger = core.ledger()  # some are in the core, under their keys: someone has to look
    assert ledger["effects"] >= 1 and ledger["duplicate_keys"] == 0
