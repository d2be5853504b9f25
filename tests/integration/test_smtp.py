"""Email through a real SMTP exchange: closeloop's client against its local sink (aiosmtpd)."""

from __future__ import annotations

import email
import ssl
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa

from closeloop.channels import OutgoingMessage
from closeloop.channels.devtls import dev_certificate
from closeloop.channels.smtp import SmtpChannel, SmtpSink


def message(n: int, address: str = "ana@example.com") -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key=f"key{n:03d}",
        case_id="case_1",
        channel="email",
        address=address,
        subject=f"Your payment {n}",
        body=f"Hello Ana,\npay here: https://closeloop.example/m/tok{n}\n",
        link=f"https://closeloop.example/m/tok{n}",
        unsubscribe_url=f"https://closeloop.example/u/unsub{n}",
    )


def parsed(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sink.db'}")
    server = SmtpSink(engine).start()
    yield server
    server.stop()
    engine.dispose()


def test_messages_arrive_with_one_click_unsubscribe_on_one_session(sink: SmtpSink) -> None:
    channel = SmtpChannel(host=sink.host, port=sink.port, sender="Acme Card <billing@acme.test>")
    results = [channel.send(message(n)) for n in range(3)]
    assert [r.status for r in results] == ["sent"] * 3
    assert channel.opened == 1  # one session carried all three
    channel.close()
    received = sink.received()
    assert [r["rcpt_to"] for r in received] == ["ana@example.com"] * 3
    first = parsed(received[0]["raw"])
    assert first["From"] == "Acme Card <billing@acme.test>"
    assert first["To"] == "ana@example.com"
    assert first["Subject"] == "Your payment 0"
    assert first["Message-ID"] == "<key000@closeloop>"
    assert first["List-Unsubscribe"] == "<https://closeloop.example/u/unsub0>"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    body = first.get_body(preferencelist=("plain",))
    assert body is not None and "https://closeloop.example/m/tok0" in body.get_content()


def test_spanish_text_arrives_intact_and_long_lines_are_wrapped(sink: SmtpSink) -> None:
    channel = SmtpChannel(host=sink.host, port=sink.port, sender="Tarjeta Ñandú <cobros@acme.test>")
    link = "https://closeloop.example/m/" + "t" * 1200  # longer than SMTP allows on one line
    spanish = OutgoingMessage(
        **{
            **message(7).__dict__,
            "subject": "¿Actualizó su tarjeta? Pago pendiente",
            "body": f"Hola Ana,\nsu pago no se procesó. Páguelo aquí: {link}\n",
        }
    )
    assert channel.send(spanish).status == "sent"
    assert channel.send(OutgoingMessage(**{**message(8).__dict__, "body": link})).status == "sent"
    channel.close()
    first, second = (parsed(r["raw"]) for r in sink.received())
    assert max(len(line) for line in sink.received()[0]["raw"].splitlines()) <= 998
    assert first["Subject"] == "¿Actualizó su tarjeta? Pago pendiente"
    assert first["From"].addresses[0].display_name == "Tarjeta Ñandú"
    body = first.get_body(preferencelist=("plain",))
    assert body is not None and "su pago no se procesó" in body.get_content()
    assert link in body.get_content()
    assert second.get_content().strip() == link


def test_a_refused_mailbox_is_permanent_and_a_dead_server_is_temporary(sink: SmtpSink) -> None:
    channel = SmtpChannel(host=sink.host, port=sink.port, sender="billing@acme.test")
    refused = channel.send(message(1, address="nobody@example.invalid"))
    assert refused.status == "failed" and refused.reason.startswith("unreachable address: 550")
    assert channel.send(message(2)).status == "sent"  # the session survives a refusal
    sink.stop()
    down = channel.send(message(3))
    assert down.status == "retry" and down.reason.startswith("temporary")
    sink.start()
    assert channel.send(message(4)).status == "sent"  # reconnects by itself
    channel.close()


def test_starttls_and_auth(tmp_path: Path) -> None:
    cert, key = dev_certificate(tmp_path / "keys")
    assert dev_certificate(tmp_path / "keys") == (cert, key)  # made once, reused
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sink.db'}")
    sink = SmtpSink(
        engine,
        tls_context=server_tls,
        require_starttls=True,
        credentials={"closeloop": "s3cret"},
    ).start()
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        good = SmtpChannel(
            host=sink.host,
            port=sink.port,
            sender="billing@acme.test",
            starttls=True,
            username="closeloop",
            password="s3cret",
            tls_context=trust,
        )
        assert good.send(message(1)).status == "sent"
        good.close()
        wrong = SmtpChannel(
            host=sink.host,
            port=sink.port,
            sender="billing@acme.test",
            starttls=True,
            username="closeloop",
            password="nope",
            tls_context=trust,
        )
        refused = wrong.send(message(2))
        assert refused.status == "retry" and refused.reason.startswith("SMTP setup: 535")
        plain = SmtpChannel(host=sink.host, port=sink.port, sender="billing@acme.test")
        insecure = plain.send(message(3))
        assert insecure.status == "retry" and insecure.reason.startswith("SMTP setup: 530")
        untrusted = SmtpChannel(
            host=sink.host, port=sink.port, sender="billing@acme.test", starttls=True
        )
        assert untrusted.send(message(4)).status == "retry"  # certificate not trusted
        assert len(sink.received()) == 1
    finally:
        sink.stop()
        engine.dispose()


def test_the_dispatcher_sends_email_over_smtp(tmp_path: Path, sink: SmtpSink) -> None:
    from closeloop.app import Settings, build
    from closeloop.clock import SimClock
    from tests.conftest import EXAMPLE, NOW
    from tests.integration.test_runtime import ACCOUNT, trigger

    settings = Settings(
        data_dir=tmp_path / "data",
        workflows=[EXAMPLE],
        smtp_host=sink.host,
        smtp_port=sink.port,
        smtp_starttls=False,
        email_sender="Acme Card <billing@acme.test>",
        public_url="https://closeloop.example",
    )
    app = build(settings, clock=SimClock(NOW))
    try:
        app.ledger.add_accounts([ACCOUNT])
        (result,) = app.runtime.intake([trigger()])
        app.work()
        (mail,) = sink.received()
        got = parsed(mail["raw"])
        assert got["To"] == "ana@example.com" and "120.50" in got["Subject"]
        header = str(got["List-Unsubscribe"]).strip()  # the header may be folded
        assert header.startswith("<https://closeloop.example/u/") and header.endswith(">")
        body = got.get_body(preferencelist=("plain",))
        assert body is not None and header[1:-1] in body.get_content()
        app.service.unsubscribe(header[1:-1].rsplit("/", 1)[1])  # the one-click POST's effect
        assert result.case_id is not None
        assert app.runtime.case(result.case_id).status.value == "opted_out"
    finally:
        app.close()
