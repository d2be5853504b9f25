"""Contact policy throughput: decisions per second, and sends per second end to end.

1. `closeloop.contact.decide` over a mix of recipients (1 to 3 candidate time
   zones, a consent ledger, recent sends under two caps, a third of them at
   night), next to the bare minimum a send decision needs - one time-zone
   conversion and a window comparison - measured in the same run.
2. Messages through the whole dispatch path (claim, contact policy, render
   with fresh links, send, record the result and the case event) to each
   provider - the local sink, the SMTP sandbox over real SMTP, the Twilio
   sandbox over real HTTP - next to the same provider's client sending the
   same number of messages on its own.

    python benchmarks/contact.py [--decisions N] [--messages M]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from closeloop.contact import (
    Cap,
    ConsentRecord,
    ContactRules,
    ContactWindow,
    Proposed,
    Recipient,
    Sent,
    decide,
)

HERE = Path(__file__).resolve().parent
ZONES = [
    ("America/New_York",),
    ("America/Chicago", "America/Denver"),
    ("America/Los_Angeles",),
    ("Europe/Madrid", "Atlantic/Canary"),
    ("America/Chicago", "America/Indiana/Indianapolis", "America/New_York"),
]
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def workload(n: int) -> list[tuple[Proposed, Recipient, datetime]]:
    rng = random.Random(7)
    items = []
    for i in range(n):
        now = START + timedelta(minutes=rng.randrange(0, 7 * 24 * 60))
        address = f"+1212{rng.randint(2000000, 9999999)}"  # a different customer each
        ledger = tuple(
            ConsentRecord(
                channel="sms",
                address=address,
                granted=rng.random() > 0.05,
                at=now - timedelta(days=rng.randint(1, 90)),
                actor="customer",
                method="web form",
                source="bench",
            )
            for _ in range(rng.randint(0, 2))
        )
        sent = tuple(
            Sent(at=now - timedelta(hours=rng.randint(1, 200)), case_id=f"c{i % 7}", channel="sms")
            for _ in range(rng.randint(0, 4))
        )
        message = Proposed(case_id=f"c{i % 7}", channel="sms", address=address)
        recipient = Recipient(zones=rng.choice(ZONES), consents=ledger, sent=sent)
        items.append((message, recipient, now))
    return items


def run_decisions(n: int) -> tuple[float, float]:
    rules = ContactRules(
        caps=(Cap(scope="customer", max=3, per=timedelta(days=7)), Cap(scope="case", max=5))
    )
    items = workload(n)
    started = time.perf_counter()
    for message, recipient, now in items:
        decide(message, recipient, rules, now)
    full = n / (time.perf_counter() - started)
    window = ContactWindow()
    zones = [ZoneInfo(r.zones[0]) for _, r, _ in items]
    started = time.perf_counter()
    for (_, _, now), zone in zip(items, zones, strict=True):
        window.start <= now.astimezone(zone).time() < window.end  # noqa: B015
    bare = n / (time.perf_counter() - started)
    return full, bare


def _serve(app: object, port: int) -> object:
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sends(m: int, folder: Path, provider: str) -> tuple[float, float]:
    """(dispatch sends/s, provider-alone sends/s) for `sink`, `smtp` or `twilio`."""
    import sqlalchemy as sa

    from closeloop.app import Settings, TriggerIn, build, settle_heap
    from closeloop.app.settings import EXAMPLE
    from closeloop.channels import OutgoingMessage
    from closeloop.channels.smtp import SmtpSink
    from closeloop.channels.twilio_sandbox import TwilioSandbox
    from closeloop.clock import SimClock

    sid, token = "AC" + "0" * 32, "bench-token"
    extra: dict[str, object] = {}
    stop = []
    channel = "sms" if provider == "twilio" else "email"
    if provider == "smtp":
        sink = SmtpSink(sa.create_engine(f"sqlite:///{folder / 'smtp.db'}")).start()
        stop.append(sink.stop)
        extra = {"smtp_host": sink.host, "smtp_port": sink.port, "smtp_starttls": False}
    if provider == "twilio":
        sandbox = TwilioSandbox(
            sa.create_engine(f"sqlite:///{folder / 'twilio.db'}"),
            account_sid=sid,
            auth_token=token,
            rate_per_second=1_000_000,
        )
        port = _port()
        server = _serve(sandbox.app, port)
        stop.append(lambda: setattr(server, "should_exit", True))
        extra = {
            "twilio_base_url": f"http://127.0.0.1:{port}",
            "twilio_account_sid": sid,
            "twilio_auth_token": token,
            "twilio_sms_from": "+15005550006",
        }
    clock = SimClock(START)  # 10:00 in New York: every message may go now
    app = build(
        Settings(
            data_dir=folder,
            workflows=[EXAMPLE],
            public_url="https://closeloop.invalid",
            **extra,  # type: ignore[arg-type]
        ),
        clock=clock,
    )
    address = (
        (lambda i: f"+1212556{i % 10000:04d}")
        if channel == "sms"
        else (lambda i: f"a{i}@example.com")
    )
    app.ledger.add_accounts(
        [
            {
                "account_id": f"A{i}",
                "first_name": "Ana",
                "time_zone": "America/New_York",
                "facts": {
                    "flags": [],
                    "balance": 300.0,
                    "state": "NY",
                    "product": "card",
                    "days_past_due": 4,
                },
                "contacts": [{"channel": channel, "address": address(i)}],
            }
            for i in range(m)
        ]
    )
    data = {"amount_due": "120.50", "decline_code": "51", "due_date": "2026-03-01"}
    for first in range(0, m, 500):
        app.runtime.intake(
            [
                TriggerIn(id=f"t{i}", type="payment.failed", data={**data, "account_id": f"A{i}"})
                for i in range(first, min(m, first + 500))
            ]
        )
    if channel == "sms":  # the SMS step comes a day after the (skipped) email step
        clock.advance(timedelta(hours=24))
        while app.runtime.run_due_timers(500):
            pass
    settle_heap()
    started = time.perf_counter()
    sent = 0
    while batch := app.dispatcher.send_messages(500):
        sent += batch
    through = sent / (time.perf_counter() - started)
    assert sent == m, sent
    target = app.channels[channel]
    started = time.perf_counter()
    for i in range(m):
        result = target.send(
            OutgoingMessage(
                idempotency_key=f"bench-{i}",
                case_id=f"c{i}",
                channel=channel,
                address=address(i),
                subject="Your payment",
                body="Your payment failed: https://closeloop.invalid/m/x Reply STOP to opt out",
                link="https://closeloop.invalid/m/x",
            )
        )
        assert result.status == "sent", result
    alone = m / (time.perf_counter() - started)
    app.close()
    for halt in stop:
        halt()
    return through, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=3_000)
    args = parser.parse_args()
    if args.decisions < 100 or args.messages < 10:
        parser.error("--decisions must be at least 100 and --messages at least 10")
    full, bare = run_decisions(args.decisions)
    print(f"contact decisions       {full:>10,.0f} /s   ({args.decisions} decisions)")
    print(f"bare quiet-hours check  {bare:>10,.0f} /s")
    print(f"decision / bare check   {full / bare:>10.1%}")
    for provider in ("sink", "smtp", "twilio"):
        with tempfile.TemporaryDirectory() as tmp:
            through, alone = run_sends(args.messages, Path(tmp), provider)
        print(
            f"{provider}: dispatch end to end {through:>8,.0f} sends/s, "
            f"the provider alone {alone:>8,.0f} sends/s, ratio {through / alone:.1%}"
        )


if __name__ == "__main__":
    main()
