"""Prometheus metrics: what dispatch counts, and where it is served."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from closeloop.app import App, Settings, build
from closeloop.channels.sms import measure
from closeloop.clock import SimClock
from closeloop.web import create_api
from tests.acceptance.conftest import CLI, listening
from tests.conftest import EXAMPLE, NOW, bearer
from tests.integration.test_runtime import ACCOUNT, trigger

COST = Decimal("0.0079")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(NOW)


@pytest.fixture
def app(database_url: str, tmp_path: Path, clock: SimClock) -> Iterator[App]:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE], sms_segment_cost=COST
    )
    built = build(settings, clock=clock)
    built.ledger.add_accounts([ACCOUNT, {**ACCOUNT, "account_id": "A2"}])
    yield built
    built.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_sends_holds_and_sms_segments_are_counted_and_served(app: App, clock: SimClock) -> None:
    (first,) = app.runtime.intake([trigger("t1")])
    app.work()  # the first email
    clock.advance(timedelta(hours=24))
    app.work()  # the SMS a day later
    assert first.case_id is not None
    app.service.opt_out(first.case_id, "sms", key="stop-1")
    clock.advance(timedelta(minutes=5))
    app.runtime.intake([trigger("t2", account="A2")])  # same number, another account
    app.work()
    clock.advance(timedelta(hours=24))
    app.work()  # its SMS is blocked: the number opted out

    (sms,) = [m for m in app.sink.delivered_after(0) if m["channel"] == "sms"]
    parts = measure(sms["body"])
    got = samples(TestClient(create_api(app), headers=bearer(app, "viewer")).get("/metrics").text)
    assert got[("closeloop_messages_total", (("channel", "email"), ("result", "sent")))] == 2
    assert got[("closeloop_messages_total", (("channel", "sms"), ("result", "sent")))] == 1
    blocked = (("action", "block"), ("channel", "sms"), ("reason", "suppressed"))
    assert got[("closeloop_messages_held_total", blocked)] == 1
    segments = ("closeloop_sms_segments_total", (("encoding", parts.encoding),))
    assert got[segments] == parts.segments
    cost = got[("closeloop_sms_cost_total", ())]
    assert cost == pytest.approx(float(COST * parts.segments))


def test_the_state_of_the_system_is_read_at_each_scrape(app: App, clock: SimClock) -> None:
    """Cases by state, work due and how late, the breaker, writeback latency, rollouts."""
    client = TestClient(create_api(app), headers=bearer(app, "viewer"))
    (first,) = app.runtime.intake([trigger("t1")])
    app.runtime.intake([trigger("t2", account="A2")])
    clock.advance(timedelta(minutes=10))  # two first emails have waited ten minutes
    got = samples(client.get("/metrics").text)
    assert got[("closeloop_cases", (("status", "outreach"),))] == 2
    assert got[("closeloop_queue_depth", (("kind", "message"),))] == 2
    assert got[("closeloop_queue_oldest_due_seconds", (("kind", "message"),))] == 600
    assert got[("closeloop_queue_depth", (("kind", "writeback"),))] == 0
    closed = (("connector", "ledger"), ("state", "closed"))
    assert got[("closeloop_breaker_state", closed)] == 1
    assert got[("closeloop_breaker_state", (("connector", "ledger"), ("state", "open")))] == 0
    app.work()
    assert first.case_id is not None
    app.service.verify_identity(
        first.case_id, {"date_of_birth": "1980-02-03", "postal_code": "10001"}, key="v"
    )
    app.service.submit(first.case_id, "update_card", {"token_ref": "tok_1"}, key="s")
    app.work()
    app.rollouts.start(ROLLOUT, filename="plan.yaml", actor="ops", reason="pilot")
    got = samples(client.get("/metrics").text)
    assert got[("closeloop_cases", (("status", "resolved"),))] == 1
    assert got[("closeloop_queue_depth", (("kind", "message"),))] == 0
    latency = (("operation", "store_payment_method"), ("result", "ok"))
    assert got[("closeloop_writeback_seconds_count", latency)] == 1
    assert got[("closeloop_writeback_seconds_bucket", (("le", "+Inf"), *latency))] == 1
    assert (
        got[("closeloop_rollout_stage", (("rollout", "pilot"), ("workflow", "failed_payment")))]
        == 0
    )
    assert got[("closeloop_rollout_state", (("rollout", "pilot"), ("state", "running")))] == 1


ROLLOUT = """
rollout: pilot
version: 1
workflow: failed_payment
stages: [{name: pilot, share: 5}, {name: everyone, share: 100}]
"""


def test_a_second_app_counts_on_its_own(app: App, tmp_path: Path) -> None:
    app.runtime.intake([trigger("t1")])
    app.work()
    other = build(Settings(data_dir=tmp_path / "other", workflows=[EXAMPLE]))
    try:
        assert b"closeloop_messages_total{" not in other.telemetry.exposition()
    finally:
        other.close()
    assert b'closeloop_messages_total{channel="email",result="sent"} 1.0' in (
        app.telemetry.exposition()
    )


def test_the_worker_serves_metrics_on_its_own_port(tmp_path: Path) -> None:
    with listening(tmp_path, "work", "--interval", "0.2", "--metrics-port") as port:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert answer.status_code == 200
    assert "# TYPE closeloop_sms_cost_total counter" in answer.text
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(tmp_path)}
    env.pop("CLOSELOOP_DATABASE_URL", None)
    with socket.socket() as taken:  # a port already in use is a clear error, not a trace
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        refused = subprocess.run(
            [str(CLI), "work", "--once", "--metrics-port", str(busy)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    assert refused.returncode == 2
    assert f"--metrics-port {busy}:" in refused.stderr and "Traceback" not in refused.stderr
