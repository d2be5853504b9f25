"""Contact policy on the dispatch path, against a real SQLite file and real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, build
from closeloop.clock import SimClock
from closeloop.engine import Status
from closeloop.store.tables import contact_log, outbox
from tests.conftest import EXAMPLE, NOW
from tests.integration.test_runtime import ACCOUNT, trigger


@pytest.fixture
def clock() -> SimClock:
    return SimClock(NOW)


@pytest.fixture
def app(database_url: str, tmp_path: Path, clock: SimClock) -> Iterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE])
    built = build(settings, clock=clock)
    built.ledger.add_accounts([ACCOUNT])
    yield built
    built.close()


def history(app: App, case_id: str) -> list[dict[str, object]]:
    with app.store.read() as tx:
        return tx.history(case_id)


def test_an_opt_out_suppresses_the_address_for_every_later_case(app: App, clock: SimClock) -> None:
    (first,) = app.runtime.intake([trigger("t1")])
    app.work()  # the first email goes out
    assert first.case_id is not None
    app.service.opt_out(first.case_id, "email", key="optout-1")
    assert app.runtime.case(first.case_id).status is Status.OPTED_OUT
    with app.store.read() as tx:
        seeded, record = tx.consents_for([("email", "ana@example.com")])
    # The account's consent, recorded when first relied on; then the withdrawal.
    assert (seeded.granted, seeded.actor, seeded.method, seeded.at) == (
        True,
        "system_of_record",
        "account record",
        NOW,
    )
    assert (record.granted, record.actor, record.method, record.account_id) == (
        False,
        "customer",
        "mini-app opt-out",
        "A1",
    )
    clock.advance(timedelta(minutes=5))
    (second,) = app.runtime.intake([trigger("t2")])  # a later case of the same customer
    app.work()
    assert second.case_id is not None
    failed = [h for h in history(app, second.case_id) if h["kind"] == "message_failed"]
    assert failed and str(failed[0]["reason"]).startswith("suppressed: opted out")
    emails = [m for m in app.sink.delivered_after(0) if m["channel"] == "email"]
    assert len(emails) == 1  # only the first case's, sent before the opt-out
    summary = app.store
    with summary.read() as tx:
        assert tx.contact_decisions()["blocked"] == {"suppressed": 1}
    # The case is not stuck: the next step (SMS, a day later) still goes out.
    clock.advance(timedelta(hours=24))
    app.work()
    assert any(m["channel"] == "sms" for m in app.sink.delivered_after(0))


def test_every_consent_record_says_which_notice_version_it_answers_to(
    database_url: str, tmp_path: Path, clock: SimClock
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        workflows=[EXAMPLE],
        consent_notice_version="opt-out-footer-v2",
    )
    app = build(settings, clock=clock)
    try:
        contacts = [
            {"channel": "email", "address": "ana@example.com", "consent": True, "notice": "e-v9"},
            {"channel": "sms", "address": "+12125550123", "consent": True},  # the core is silent
        ]
        app.ledger.add_accounts([{**ACCOUNT, "contacts": contacts}])
        (opened,) = app.runtime.intake([trigger("t1")])
        assert opened.case_id is not None
        app.work()  # the email goes out on the system of record's consent
        clock.advance(timedelta(hours=24))
        app.work()  # and the SMS
        app.service.opt_out(opened.case_id, "email", key="optout-1")
        with app.store.read() as tx:
            email = tx.consents_for([("email", "ana@example.com")])
            sms = tx.consents_for([("sms", "+12125550123")])
        assert [(r.granted, r.actor, r.notice_version) for r in email] == [
            (True, "system_of_record", "e-v9"),
            (False, "customer", "opt-out-footer-v2"),
        ]
        assert [(r.granted, r.actor, r.notice_version) for r in sms] == [
            (True, "system_of_record", None)
        ]
    finally:
        app.close()


def test_a_fatigue_cap_defers_without_spending_an_attempt(app: App, clock: SimClock) -> None:
    with app.store.transaction() as tx:  # three messages from other workflows this week
        tx.log_sent(
            [
                {
                    "account_id": "A1",
                    "case_id": f"other-{d}",
                    "channel": "sms",
                    "address": "+12125550123",
                    "priority": "nudge",
                    "sent_at": NOW - timedelta(days=d),
                }
                for d in (1, 2, 6)
            ]
        )
    (result,) = app.runtime.intake([trigger()])
    assert result.case_id is not None
    app.work()
    assert app.sink.delivered_after(0) == []
    (deferred,) = [h for h in history(app, result.case_id) if h["kind"] == "message_deferred"]
    data = deferred["data"]
    assert isinstance(data, dict)
    assert data["code"] == "fatigue_cap"
    frees = NOW - timedelta(days=6) + timedelta(days=7)
    assert datetime.fromisoformat(data["until"]) == frees
    with app.store.read() as tx:
        row = tx.c.execute(sa.select(outbox).where(outbox.c.kind == "message")).one()
    assert row.status == "pending" and row.attempts == 0  # a deferral is not a failure
    assert row.next_attempt_at == frees
    clock.set(frees)
    app.work()
    (sent,) = app.sink.delivered_after(0)
    assert sent["channel"] == "email"
    with app.store.read() as tx:
        logged = tx.c.execute(sa.select(contact_log).where(contact_log.c.case_id == result.case_id))
        assert [(r.channel, r.priority) for r in logged] == [("email", "required")]


def test_a_message_that_reaches_dispatch_at_night_waits_for_the_morning(
    app: App, clock: SimClock
) -> None:
    (result,) = app.runtime.intake([trigger()])  # 10:00 in New York: the email is due now
    assert result.case_id is not None
    clock.set(datetime(2026, 3, 3, 3, 30, tzinfo=UTC))  # the worker only runs at 22:30
    app.work()
    assert app.sink.delivered_after(0) == []
    deferred = [h for h in history(app, result.case_id) if h["kind"] == "message_deferred"]
    assert deferred[0]["data"]["code"] == "quiet_hours"  # type: ignore[index]
    clock.set(datetime(2026, 3, 3, 13, 0, tzinfo=UTC))  # 08:00 in New York
    app.work()
    assert [m["channel"] for m in app.sink.delivered_after(0)] == ["email"]


def test_a_message_held_overnight_does_not_go_once_the_case_has_closed(
    app: App, clock: SimClock
) -> None:
    """Paid elsewhere at 07:00: the 'your payment was declined' email due at 08:00 stays."""
    from closeloop.app import TriggerIn

    (result,) = app.runtime.intake([trigger()])
    assert result.case_id is not None
    clock.set(datetime(2026, 3, 3, 3, 30, tzinfo=UTC))
    app.work()  # deferred by quiet hours to 08:00 New York time
    paid = TriggerIn(id="paid", type="payment.posted", data={"account_id": "A1"})
    app.runtime.intake([paid])
    clock.set(datetime(2026, 3, 3, 13, 0, tzinfo=UTC))
    app.work()
    assert app.sink.delivered_after(0) == []
    with app.store.read() as tx:
        assert tx.contact_decisions()["blocked"] == {"case_closed": 1}


def test_every_email_carries_a_working_unsubscribe_link(app: App) -> None:
    (result,) = app.runtime.intake([trigger()])
    app.work()
    (email,) = app.sink.delivered_after(0)
    assert "/u/" in email["body"]
    token = email["body"].split("/u/", 1)[1].split()[0]
    assert app.service.unsubscribe_target(token) == {
        "channel": "email",
        "address": "ana@example.com",
    }
    assert app.service.unsubscribe(token) == app.service.unsubscribe(token)  # repeatable
    with app.store.read() as tx:
        assert [r.granted for r in tx.consents_for([("email", "ana@example.com")])] == [
            True,
            False,
        ]
    assert result.case_id is not None
    assert app.runtime.case(result.case_id).status is Status.OPTED_OUT


def test_a_provider_rate_limit_paces_sends_without_failing_them(
    database_url: str, tmp_path: Path, clock: SimClock
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE], email_per_second=2
    )
    app = build(settings, clock=clock)
    try:
        app.ledger.add_accounts([{**ACCOUNT, "account_id": f"A{i}"} for i in range(5)])
        app.runtime.intake([trigger(f"t{i}", account=f"A{i}") for i in range(5)])
        app.dispatcher.send_messages(100)
        assert len(app.sink.delivered_after(0)) == 2  # two tokens, one batch
        with app.store.read() as tx:
            rows = tx.c.execute(
                sa.select(outbox).where(outbox.c.kind == "message", outbox.c.status == "pending")
            ).all()
        assert len(rows) == 3
        assert all(r.attempts == 0 and r.result == {"deferred": "rate_limit"} for r in rows)
        assert all(NOW < r.next_attempt_at <= NOW + timedelta(seconds=2) for r in rows)
    finally:
        app.close()


def test_a_batch_sent_on_several_connections_is_recorded_once_each(
    database_url: str, tmp_path: Path, clock: SimClock
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE], send_concurrency=4
    )
    app = build(settings, clock=clock)
    try:
        app.ledger.add_accounts([{**ACCOUNT, "account_id": f"A{i}"} for i in range(9)])
        app.runtime.intake([trigger(f"t{i}", account=f"A{i}") for i in range(9)])
        assert app.dispatcher.send_messages(100) == 9
        delivered = app.sink.delivered_after(0)
        assert len(delivered) == 9 and all(m["attempts"] == 1 for m in delivered)
        with app.store.read() as tx:
            statuses = tx.outbox_counts()
            logged = tx.c.execute(sa.select(sa.func.count()).select_from(contact_log)).scalar()
        assert statuses == {("message", "done"): 9} and logged == 9
    finally:
        app.close()
