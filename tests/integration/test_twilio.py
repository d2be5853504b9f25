"""SMS over Twilio's API against closeloop's sandbox, with signed webhooks, over real HTTP.

closeloop's API and the Twilio sandbox each run in a real HTTP server
(uvicorn) on loopback: closeloop's Twilio client posts to the sandbox, the
sandbox posts signed status callbacks and customers' replies back to
closeloop's webhooks. Signatures in these tests are made with Twilio's own
Python library, so closeloop is checked against the reference implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from twilio.request_validator import RequestValidator

from closeloop.app import App, Settings, build
from closeloop.app.inbound import keyword
from closeloop.channels import OutgoingMessage
from closeloop.channels.twilio import TwilioChannel, signature
from closeloop.channels.twilio_sandbox import TwilioSandbox
from closeloop.clock import SimClock
from closeloop.contact import ContactRules, Proposed, Recipient, decide
from closeloop.web import create_api
from tests.conftest import EXAMPLE, NOW
from tests.integration.test_runtime import ACCOUNT, trigger
from tests.servers import Served, free_port

SID, TOKEN, OURS = "AC" + "0" * 32, "sandbox-auth-token", "+15005550006"


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[tuple[App, TwilioSandbox, str]]:
    ours, theirs = free_port(), free_port()
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        workflows=[EXAMPLE],
        public_url=f"http://127.0.0.1:{ours}",
        twilio_base_url=f"http://127.0.0.1:{theirs}",
        twilio_account_sid=SID,
        twilio_auth_token=TOKEN,
        twilio_sms_from=OURS,
        program_name="Acme Card",
        consent_notice_version="sms-terms-v4",
    )
    clock = SimClock(NOW)
    app = build(settings, clock=clock)
    sms_only = {
        **ACCOUNT,
        "contacts": [{"channel": "sms", "address": "+12125550123", "consent": True}],
    }
    app.ledger.add_accounts(
        [
            sms_only,
            {
                **sms_only,
                "account_id": "A2",
                "contacts": [{"channel": "sms", "address": "+12125550110", "consent": True}],
            },
            {
                **sms_only,
                "account_id": "A3",
                "contacts": [
                    {"channel": "sms", "address": "+12125550104", "consent": True},
                    {"channel": "email", "address": "a3@example.com", "consent": True},
                ],
            },
        ]
    )
    sandbox = TwilioSandbox(
        sa.create_engine(f"sqlite:///{tmp_path / 'twilio.db'}"),
        account_sid=SID,
        auth_token=TOKEN,
        inbound_url=f"{settings.public_url}/webhooks/twilio/inbound",
        rate_per_second=50,
    )
    api, provider = Served(create_api(app), ours), Served(sandbox.app, theirs)
    yield app, sandbox, api.url
    provider.stop()
    api.stop()
    app.close()
    sandbox.engine.dispose()


def history(app: App, case_id: str) -> list[dict[str, Any]]:
    with app.store.read() as tx:
        return tx.history(case_id)


def test_an_sms_goes_through_twilio_and_its_delivery_is_reported(
    world: tuple[App, TwilioSandbox, str],
) -> None:
    app, sandbox, _ = world
    (result,) = app.runtime.intake([trigger()])
    assert result.case_id is not None
    app.work()  # the first step is email: no address, skipped
    app.clock.advance(timedelta(hours=24))  # type: ignore[attr-defined]
    app.work()  # the SMS step
    (sent,) = [m for m in sandbox.messages() if m["direction"] == "outbound-api"]
    assert (sent["to"], sent["from_"]) == ("+12125550123", OURS)
    assert "Reply STOP to opt out" in sent["body"] and "/m/" in sent["body"]
    assert sandbox.deliver_callbacks() == 3  # queued, sent, delivered: signed, accepted
    with app.store.read() as tx:
        assert tx.delivery_counts() == {"delivered": 1}
        assert tx.webhook_rejections() == []
    assert [m["status"] for m in sandbox.messages()] == ["delivered"]


def test_undelivered_sms_falls_back_through_the_case(
    world: tuple[App, TwilioSandbox, str],
) -> None:
    app, sandbox, _ = world
    (result,) = app.runtime.intake([trigger("t2", account="A2")])
    assert result.case_id is not None
    app.work()
    app.clock.advance(timedelta(hours=24))  # type: ignore[attr-defined]
    app.work()
    sandbox.deliver_callbacks()
    failed = [h for h in history(app, result.case_id) if h["kind"] == "message_failed"]
    assert failed and failed[-1]["reason"] == "unreachable: undelivered (error 30003)"
    with app.store.read() as tx:
        assert tx.delivery_counts() == {"undelivered": 1}


def test_an_opt_out_twilio_knows_of_is_recorded_and_stops_that_number(
    world: tuple[App, TwilioSandbox, str],
) -> None:
    app, sandbox, _ = world
    (result,) = app.runtime.intake([trigger("t4", account="A3")])
    assert result.case_id is not None
    app.work()  # the email
    app.clock.advance(timedelta(hours=24))  # type: ignore[attr-defined]
    app.work()  # the SMS: Twilio answers 21610
    failed = [h for h in history(app, result.case_id) if h["kind"] == "message_failed"]
    assert failed and str(failed[0]["reason"]).startswith("opted_out: 400 21610")
    with app.store.read() as tx:
        (record,) = [r for r in tx.consents_for([("sms", "+12125550104")]) if not r.granted]
    assert (record.actor, record.method) == ("provider", "provider refused: " + failed[0]["reason"])
    assert [m for m in sandbox.messages() if m["direction"] == "outbound-api"] == []


def test_stop_help_and_start_from_the_customer(world: tuple[App, TwilioSandbox, str]) -> None:
    app, sandbox, _ = world
    stop = sandbox.reply("+12125550123", OURS, "  Stop! ")
    assert stop["status"] == 200
    assert stop["replies"] == [
        "Acme Card: you are unsubscribed and will get no more messages. "
        "Reply START to subscribe again."
    ]
    assert sandbox.reply("+12125550123", OURS, "STOPALL")["replies"] == []  # one confirmation
    help_ = sandbox.reply("+12125550123", OURS, "help")["replies"]
    assert len(help_) == 1 and "Acme Card" in help_[0]
    assert "Msg & data rates may apply" in help_[0] and "Reply STOP to opt out" in help_[0]
    with app.store.read() as tx:
        ledger = tx.consents_for([("sms", "+12125550123")])
    assert [(r.granted, r.method, r.source, r.notice_version) for r in ledger] == [
        (False, "sms keyword Stop!", "twilio", "sms-terms-v4")
    ]
    # While suppressed, nothing goes to the number from any workflow.
    (result,) = app.runtime.intake([trigger("t3")])
    assert result.case_id is not None
    app.work()
    app.clock.advance(timedelta(hours=24))  # type: ignore[attr-defined]
    app.work()
    assert [m for m in sandbox.messages() if m["direction"] == "outbound-api"] == []
    failed = [h for h in history(app, result.case_id) if h["kind"] == "message_failed"]
    assert failed and str(failed[0]["reason"]).startswith("suppressed")
    start = sandbox.reply("+12125550123", OURS, "UNSTOP")["replies"]
    assert start == ["Acme Card: you are subscribed again. Reply HELP for help, STOP to opt out."]
    with app.store.read() as tx:
        assert tx.consents_for([("sms", "+12125550123")])[-1].granted


def test_unsigned_and_tampered_webhooks_are_refused_and_recorded(
    world: tuple[App, TwilioSandbox, str],
) -> None:
    app, _, base = world
    url = f"{app.settings.public_url}/webhooks/twilio/inbound"
    params = {"MessageSid": "SM" + "1" * 32, "From": "+12125550123", "To": OURS, "Body": "STOP"}
    official = RequestValidator(TOKEN).compute_signature(url, params)
    assert official == signature(url, params, TOKEN)  # the same algorithm as Twilio's library
    unsigned = httpx.post(f"{base}/webhooks/twilio/inbound", data=params)
    tampered = httpx.post(
        f"{base}/webhooks/twilio/inbound",
        data={**params, "Body": "HELP"},
        headers={"X-Twilio-Signature": official},
    )
    wrong_key = RequestValidator("not-the-token").compute_signature(url, params)
    forged = httpx.post(
        f"{base}/webhooks/twilio/inbound", data=params, headers={"X-Twilio-Signature": wrong_key}
    )
    assert unsigned.status_code == tampered.status_code == forged.status_code == 403
    with app.store.read() as tx:
        reasons = [r["reason"] for r in tx.webhook_rejections()]
        assert tx.consents_for([("sms", "+12125550123")]) == []  # nothing changed
    assert reasons == [
        "no X-Twilio-Signature",
        "X-Twilio-Signature does not match",
        "X-Twilio-Signature does not match",
    ]
    good = httpx.post(
        f"{base}/webhooks/twilio/inbound", data=params, headers={"X-Twilio-Signature": official}
    )
    assert good.status_code == 200 and "<Message>" in good.text
    again = httpx.post(
        f"{base}/webhooks/twilio/inbound", data=params, headers={"X-Twilio-Signature": official}
    )
    assert again.status_code == 200 and "<Message>" not in again.text  # a retried webhook


def sms(to: str, key: str) -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key=key,
        case_id="c",
        channel="sms",
        address=to,
        subject=None,
        body="hello, reply STOP to opt out",
        link="",
    )


def test_the_client_classifies_what_twilio_answers(world: tuple[App, TwilioSandbox, str]) -> None:
    app, sandbox, _ = world

    def client(token: str = TOKEN, base: str = app.settings.twilio_base_url) -> TwilioChannel:
        return TwilioChannel(base_url=base, account_sid=SID, auth_token=token, sender=OURS)

    channel = client()
    assert channel.send(sms("+12125550123", "k0")).status == "sent"
    opted = channel.send(sms("+12125550104", "k1"))
    assert (opted.status, opted.failure) == ("failed", "opted_out")
    assert channel.send(sms("+15005550001", "k2")).failure == "unreachable"
    assert channel.send(sms("+12125550109", "k3")).failure == "unreachable"
    sandbox.rate = 2
    answers = [channel.send(sms("+12125550123", f"r{n}")) for n in range(3)]
    limited = [a for a in answers if a.status == "retry"]
    assert limited and limited[0].retry_after == 1.0 and "rate limited: 429" in limited[0].reason
    bad_auth, down = client(token="wrong"), client(base="http://127.0.0.1:9")
    denied = bad_auth.send(sms("+12125550123", "x"))
    assert denied.status == "retry" and denied.reason.startswith("Twilio setup: 401")
    assert down.send(sms("+12125550123", "y")).status == "retry"
    for c in (channel, bad_auth, down):
        c.close()


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("STOP", "stop"),
        ("  stop  ", "stop"),
        ("Stop.", "stop"),
        ("stopall", "stop"),
        ("Unsubscribe!", "stop"),
        ("cancel", "stop"),
        ("END", "stop"),
        ("quit", "stop"),
        ("Revoke", "stop"),
        ("opt out", "stop"),
        ("OPT-OUT", "stop"),
        ("help", "help"),
        ("Info?", "help"),
        ("start", "start"),
        ("UNSTOP", "start"),
        ("please stop texting", None),
        ("stopped", None),
        ("", None),
    ],
)
def test_keywords(text: str, word: str | None) -> None:
    assert keyword(text) == word


def test_a_whatsapp_message_from_the_customer_opens_the_free_form_window(
    world: tuple[App, TwilioSandbox, str],
) -> None:
    app, sandbox, _ = world
    sandbox.reply("whatsapp:+12125550123", f"whatsapp:{OURS}", "hola")
    now = app.clock.now()
    with app.store.read() as tx:
        seen = tx.last_inbound([("whatsapp", "+12125550123"), ("whatsapp", "+12125550199")])
    assert list(seen) == [("whatsapp", "+12125550123")]
    free_form = Proposed(case_id="c", channel="whatsapp", address="+12125550123")
    ny = ("America/New_York",)
    opened = Recipient(zones=ny, last_inbound={"whatsapp": seen[("whatsapp", "+12125550123")]})
    assert decide(free_form, opened, ContactRules(), now).sends
    later = decide(free_form, opened, ContactRules(), now + timedelta(hours=24))
    assert later.reason == "whatsapp_window"


def test_whatsapp_goes_as_an_approved_template_or_inside_the_session(
    world: tuple[App, TwilioSandbox, str],
) -> None:
    app, sandbox, _ = world
    base = app.settings.twilio_base_url
    whatsapp = TwilioChannel(
        base_url=base,
        account_sid=SID,
        auth_token=TOKEN,
        sender=OURS,
        whatsapp=True,
        status_callback=f"{app.settings.public_url}/webhooks/twilio/status",
    )
    template = OutgoingMessage(
        idempotency_key="wa1",
        case_id="c",
        channel="whatsapp",
        address="+12125550123",
        subject=None,
        body="Hi Ana, your payment of $120.50 is still due: https://x/m/t",
        link="https://x/m/t",
        template_id="HX1234",
        template_variables={"1": "Ana", "2": "120.50", "3": "https://x/m/t"},
    )
    free_form = OutgoingMessage(
        idempotency_key="wa2",
        case_id="c",
        channel="whatsapp",
        address="+12125550123",
        subject=None,
        body="Any questions?",
        link="",
    )
    assert whatsapp.send(template).status == "sent"
    assert whatsapp.send(free_form).status == "sent"  # accepted, then...
    outbound = [m for m in sandbox.messages() if m["direction"] == "outbound-api"]
    assert outbound[0]["to"] == "whatsapp:+12125550123"
    assert outbound[0]["body"] == '[HX1234] {"1": "Ana", "2": "120.50", "3": "https://x/m/t"}'
    sandbox.deliver_callbacks()
    assert [m["status"] for m in sandbox.messages()] == ["delivered", "failed"]
    assert sandbox.messages()[1]["error_code"] == "63016"  # ...outside the 24 h window
    sandbox.reply("whatsapp:+12125550123", f"whatsapp:{OURS}", "hola")
    assert (
        whatsapp.send(OutgoingMessage(**{**free_form.__dict__, "idempotency_key": "wa3"})).status
        == "sent"
    )
    sandbox.deliver_callbacks()
    assert sandbox.messages()[-1]["status"] == "delivered"  # inside the window now
    whatsapp.close()
