"""The runtime and store against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, TriggerIn, build
from closeloop.app.links import token_from_url
from closeloop.clock import SimClock
from closeloop.engine import Disputed, Event, LinkOpened, OptedOut, Status, step
from closeloop.errors import NotFound, StateError, TriggerError
from closeloop.store import Applied, Store
from closeloop.store.database import current_revision
from closeloop.testing import ON_FILE
from tests.conftest import EXAMPLE, NOW

ACCOUNT = {
    "account_id": "A1",
    "first_name": "Ana",
    "time_zone": "America/New_York",
    "facts": {"flags": [], "balance": 300.0, "state": "NY", "product": "card", "days_past_due": 4},
    "contacts": [
        {"channel": "email", "address": "ana@example.com", "consent": True},
        {"channel": "sms", "address": "+12125550123", "consent": True},
    ],
    "payment_methods": [ON_FILE],
    "secrets": {"date_of_birth": "1980-02-03", "postal_code": "10001"},
}


def trigger(ident: str = "t1", account: str = "A1", amount: str = "120.50") -> TriggerIn:
    return TriggerIn(
        id=ident,
        type="payment.failed",
        data={
            "account_id": account,
            "amount_due": amount,
            "decline_code": "51",
            "due_date": "2026-03-01",
        },
    )


@pytest.fixture
def clock() -> SimClock:
    return SimClock(NOW)


@pytest.fixture
def app(database_url: str, tmp_path: Path, clock: SimClock) -> App:
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE])
    built = build(settings, clock=clock)
    built.ledger.add_accounts([ACCOUNT, {**ACCOUNT, "account_id": "A2"}])
    yield built
    built.close()


def test_migrations_bring_the_schema_to_head(app: App) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from closeloop.store.tables import metadata

    assert current_revision(app.store.engine) == "0009"
    names = set(sa.inspect(app.store.engine).get_table_names())
    assert {"cases", "case_events", "timers", "outbox", "exceptions", "links"} <= names
    assert {"consents", "contact_log", "unsubscribe_tokens", "miniapp_sessions"} <= names
    assert {"staff_users", "staff_sessions", "api_tokens", "staff_audit"} <= names
    with app.store.engine.connect() as connection:
        drift = compare_metadata(MigrationContext.configure(connection), metadata)
    assert drift == [], drift  # the migrations build exactly the tables the code maps


def test_intake_is_idempotent_on_the_trigger_id(app: App) -> None:
    first = app.runtime.intake([trigger(), trigger()])
    again = app.runtime.intake([trigger()])
    assert first[0].created and not first[1].created
    assert again[0].case_id == first[0].case_id and not again[0].created
    with app.store.read() as tx:
        assert tx.status_counts() == {"outreach": 1}


def test_a_bad_trigger_names_the_field_and_writes_nothing(app: App) -> None:
    bad = TriggerIn(id="t9", type="payment.failed", data={"account_id": "A1", "amount_due": "lots"})
    with pytest.raises(TriggerError) as info:
        app.runtime.intake([trigger("t8"), bad])
    locs = [e["loc"] for e in info.value.field_errors]
    assert ["data", "amount_due"] in locs and ["data", "decline_code"] in locs
    with app.store.read() as tx:
        assert tx.status_counts() == {}


def test_the_whole_journey_to_expiry(app: App, clock: SimClock) -> None:
    (result,) = app.runtime.intake([trigger()])
    app.work()
    clock.advance(timedelta(hours=24))
    app.work()
    clock.advance(timedelta(hours=48))
    app.work()
    clock.advance(timedelta(days=6))
    app.work()
    case = app.runtime.case(result.case_id)
    assert case.status is Status.EXPIRED
    channels = [m["channel"] for m in app.sink.delivered_after(0)]
    assert channels == ["email", "sms", "email"]  # no whatsapp contact: fallback email
    with app.store.read() as tx:
        kinds = [h["kind"] for h in tx.history(result.case_id)]
        assert tx.next_timer_due() is None
    assert kinds[0] == "opened" and kinds[-1] == "expired"
    assert kinds.count("message_sent") == 3


def test_the_customer_resolves_from_the_message(app: App, clock: SimClock) -> None:
    (result,) = app.runtime.intake([trigger()])
    app.work()
    (message,) = app.sink.delivered_after(0)
    token = token_from_url(message["link"])
    visit = app.service.redeem(token, key="k-open")
    assert app.service.redeem(token, key="k-open") == visit  # the same action again
    with pytest.raises(NotFound):
        app.service.redeem(token, key="another-visit")  # single use
    assert not app.service.verify_identity(
        visit.case_id, {"date_of_birth": "1999-01-01", "postal_code": "10001"}, key="k-1"
    )
    assert app.service.verify_identity(
        visit.case_id, {"date_of_birth": "1980-02-03", "postal_code": "10001"}, key="k-2"
    )
    with pytest.raises(StateError, match="between"):
        app.service.submit(visit.case_id, "pay_now", {"amount": "1", "method": "pm_1"}, key="k-3")
    app.service.submit(visit.case_id, "pay_now", {"amount": "120.50", "method": "pm_1"}, key="k-4")
    app.service.submit(visit.case_id, "pay_now", {"amount": "120.50", "method": "pm_1"}, key="k-4")
    app.work()
    assert app.runtime.case(result.case_id).status is Status.RESOLVED
    assert app.ledger.effect_count() == 3 and app.ledger.duplicate_effects() == 0


def test_payment_posted_closes_open_cases(app: App) -> None:
    app.runtime.intake([trigger("t1", "A1"), trigger("t2", "A2")])
    posted = TriggerIn(id="p1", type="payment.posted", data={"account_id": "A1"})
    (result,) = app.runtime.intake([posted])
    assert result.closed == 1
    assert app.runtime.intake([posted])[0].status == "duplicate"
    with app.store.read() as tx:
        assert tx.status_counts() == {"resolved_elsewhere": 1, "outreach": 1}


def test_retried_writebacks_have_no_second_effect(app: App, clock: SimClock) -> None:
    app.ledger.error_rate = 0.7
    app.ledger.timeout_rate = 0.5
    (result,) = app.runtime.intake([trigger()])
    app.service.verify_identity(
        result.case_id, {"date_of_birth": "1980-02-03", "postal_code": "10001"}, key="v"
    )
    app.service.submit(result.case_id, "update_card", {"token_ref": "tok_1"}, key="s")
    for _ in range(40):
        app.work()
        clock.advance(timedelta(minutes=30))
    assert app.runtime.case(result.case_id).status in {Status.RESOLVED, Status.EXCEPTION}
    assert app.ledger.duplicate_effects() == 0


def test_a_lease_held_by_a_dead_worker_is_released(app: App, clock: SimClock) -> None:
    app.runtime.intake([trigger()])
    with app.store.transaction() as tx:
        (item,) = tx.claim_outbox("message", clock.now(), 10)
        tx.lease_outbox([item.id], clock.now() + timedelta(minutes=5))
    assert app.dispatcher.send_messages() == 0  # leased: not due
    app.dispatcher.release_leases()
    assert app.dispatcher.send_messages() == 1


@pytest.mark.postgres
def test_concurrent_workers_never_claim_the_same_timer(
    postgres_url: str, tmp_path: Path, clock: SimClock
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, workflows=[EXAMPLE])
    app = build(settings, clock=clock)
    accounts = [{**ACCOUNT, "account_id": f"B{i}"} for i in range(60)]
    app.ledger.add_accounts(accounts)
    app.runtime.intake([trigger(f"t{i}", f"B{i}") for i in range(60)])
    app.work()
    clock.advance(timedelta(hours=24))
    store = Store.connect(postgres_url)
    claimed: list[list[tuple[str, str]]] = []
    barrier = threading.Barrier(2)

    def claim() -> None:
        with store.transaction() as tx:
            rows = tx.claim_due_timers(clock.now(), 40)
            barrier.wait(timeout=10)
            claimed.append(rows)

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = claimed
    assert len(first) + len(second) == 60
    assert not set(first) & set(second)
    store.dispose()
    app.close()


def test_rows_from_the_driver_path_read_the_same_through_sqlalchemy(app: App) -> None:
    """The per-step statements encode times and JSON exactly as SQLAlchemy does."""
    (result,) = app.runtime.intake([trigger()])
    assert result.case_id is not None
    case = app.runtime.case(result.case_id)
    with app.store.read() as tx:
        row = tx.c.execute(
            sa.text("SELECT opened_at, state FROM cases WHERE id = :id"), {"id": case.id}
        ).one()
        history = tx.history(case.id)
        due = tx.next_timer_due()
    typed = sa.select(
        sa.column("opened_at", sa.DateTime()), sa.column("state", sa.JSON())
    ).select_from(sa.table("cases"))
    with app.store.read() as tx:
        opened_at, state = tx.c.execute(typed.where(sa.column("id") == case.id)).one()
    assert (
        opened_at.replace(tzinfo=None)
        == NOW.replace(tzinfo=None)
        == case.opened_at.replace(tzinfo=None)
    )
    assert state["contacts"][0]["address"] == "ana@example.com"
    assert state["pending_writebacks"] == []
    assert row is not None
    assert [h["kind"] for h in history][:2] == ["opened", "message_requested"]
    assert history[0]["at"] == NOW
    assert due is not None and due > NOW


def test_cached_cases_follow_other_processes_and_ignore_rolled_back_writes(
    app: App, database_url: str, clock: SimClock
) -> None:
    """Decoded cases are reused only while the stored seq says they are current."""
    (result,) = app.runtime.intake([trigger()])
    assert result.case_id is not None
    before = app.runtime.case(result.case_id)
    spec = app.runtime.spec_for(before)

    def apply(store: Store, event: Event, *, fail: bool = False) -> None:
        with store.transaction() as tx:
            case, _ = tx.load_case_for_event(before.id, event.key)
            assert case is not None
            decision = step(case, event, spec, clock.now())
            tx.commit_decisions([Applied(decision=decision, dedupe_key=event.key)], clock.now())
            if fail:
                raise RuntimeError("the transaction fails after writing")

    other = Store.connect(database_url)  # another worker process on the same database
    try:
        apply(other, LinkOpened(channel="sms", key="k1"))
        after = app.runtime.case(before.id)
        assert (after.status, after.seq) == (Status.ENGAGED, before.seq + 1)
        with pytest.raises(RuntimeError):
            apply(app.store, Disputed(reason="x", key="k2"), fail=True)
        apply(other, OptedOut(channel="sms", key="k3"))  # the same seq the rollback used
        final = app.runtime.case(before.id)
    finally:
        other.dispose()
    assert (final.status, final.seq) == (Status.OPTED_OUT, after.seq + 1)
