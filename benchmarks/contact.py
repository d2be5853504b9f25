"""Contact policy throughput: decisions per second, and sends per second end to end.

1. `closeloop.contact.decide` over a mix of recipients (1 to 3 candidate time
   zones, a consent ledger, recent sends under two caps, a third of them at
   night), next to the bare minimum a send decision needs - one time-zone
   conversion and a window comparison - measured in the same run.
2. Messages through the whole dispatch path (claim, contact policy, render
   with fresh links, send, record the result and the case event) to the local
   sink provider, next to the sink provider alone taking the same messages.

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


def run_sends(m: int, folder: Path) -> tuple[float, float]:
    from closeloop.app import Settings, build, settle_heap
    from closeloop.app.settings import EXAMPLE
    from closeloop.channels import OutgoingMessage
    from closeloop.clock import SimClock

    clock = SimClock(START)  # 10:00 in New York: every message may go now
    app = build(
        Settings(data_dir=folder, workflows=[EXAMPLE], public_url="https://closeloop.invalid"),
        clock=clock,
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
                "contacts": [{"channel": "email", "address": f"a{i}@example.com"}],
            }
            for i in range(m)
        ]
    )
    from closeloop.app import TriggerIn

    data = {"amount_due": "120.50", "decline_code": "51", "due_date": "2026-03-01"}
    for first in range(0, m, 500):
        app.runtime.intake(
            [
                TriggerIn(id=f"t{i}", type="payment.failed", data={**data, "account_id": f"A{i}"})
                for i in range(first, min(m, first + 500))
            ]
        )
    settle_heap()
    started = time.perf_counter()
    sent = 0
    while batch := app.dispatcher.send_messages(500):
        sent += batch
    through = sent / (time.perf_counter() - started)
    assert sent == m, sent
    started = time.perf_counter()
    for i in range(m):
        app.sink.send(
            OutgoingMessage(
                idempotency_key=f"bench-{i}",
                case_id=f"c{i}",
                channel="email",
                address=f"a{i}@example.com",
                subject="Your payment",
                body="x" * 300,
                link="https://closeloop.invalid/m/x",
            )
        )
    alone = m / (time.perf_counter() - started)
    app.close()
    return through, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=3_000)
    args = parser.parse_args()
    if args.decisions < 100 or args.messages < 10:
        parser.error("--decisions must be at least 100 and --messages at least 10")
    full, bare = run_decisions(args.decisions)
    with tempfile.TemporaryDirectory() as tmp:
        through, alone = run_sends(args.messages, Path(tmp))
    print(f"contact decisions       {full:>10,.0f} /s   ({args.decisions} decisions)")
    print(f"bare quiet-hours check  {bare:>10,.0f} /s")
    print(f"decision / bare check   {full / bare:>10.1%}")
    print(f"dispatch, end to end    {through:>10,.0f} sends/s  ({args.messages} emails, sink)")
    print(f"sink provider alone     {alone:>10,.0f} sends/s")
    print(f"dispatch / sink alone   {through / alone:>10.1%}")


if __name__ == "__main__":
    main()
