"""Kill the demo with SIGKILL mid-run, resume it, and compare with an unbroken run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import CLI, demo_json, run

ARGS = ["--accounts", "300", "--days", "12", "--seed", "11", "--rollout", "none"]


def sim_day(world: Path) -> float:
    """How far the simulated clock of a running demo has got, in days (0 if unknown)."""
    try:
        with sqlite3.connect(f"file:{world}?mode=ro", uri=True, timeout=0.2) as c:
            row = c.execute("SELECT now FROM sim_state").fetchone()
    except sqlite3.Error:
        return 0.0
    if not row:
        return 0.0
    from datetime import datetime

    from closeloop.sim.runner import START

    return (datetime.fromisoformat(row[0]) - START).total_seconds() / 86400


def invariants(out: Path) -> None:
    engine = sqlite3.connect(out / "closeloop.db")
    world = sqlite3.connect(out / "world.db")
    terminal = (
        "resolved",
        "resolved_elsewhere",
        "ineligible",
        "not_enrolled",
        "opted_out",
        "expired",
        "exception",
    )
    marks = ",".join("?" * len(terminal))
    live = engine.execute(
        f"SELECT count(*) FROM cases WHERE status NOT IN ({marks})", terminal
    ).fetchone()[0]
    assert live == 0, "every case ends in exactly one terminal state"
    closing = engine.execute(
        "SELECT case_id, count(*) FROM case_events WHERE kind IN "
        f"({marks}) GROUP BY case_id HAVING count(*) <> 1",
        terminal,
    ).fetchall()
    assert closing == [], "one terminal transition per case"
    sent = engine.execute(
        "SELECT count(*) FROM outbox WHERE kind='message' AND status='done'"
    ).fetchone()[0]
    delivered = world.execute(  # one-time codes go straight to the provider, not the outbox
        "SELECT count(*) FROM sink_messages WHERE idempotency_key NOT LIKE '%.code.%'"
    ).fetchone()[0]
    assert sent == delivered, "each message intent delivered once"
    effects = world.execute("SELECT count(*) FROM sor_ledger").fetchone()[0]
    done = engine.execute(
        "SELECT count(*) FROM outbox WHERE kind='writeback' AND status='done'"
    ).fetchone()[0]
    assert effects == done, "each writeback has exactly one effect"
    doubled = world.execute(
        "SELECT count(*) FROM (SELECT case_id, operation FROM sor_ledger "
        "GROUP BY case_id, operation HAVING count(*) > 1)"
    ).fetchone()[0]
    assert doubled == 0


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    here = tmp_path_factory.mktemp("unbroken")
    summary = demo_json(*ARGS, "--out", str(here / "out"), cwd=here)
    invariants(here / "out")
    summary.pop("database")
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("kill_at_day", [1.5, 4, 9])
def test_sigkill_then_resume_matches_an_unbroken_run(
    workdir: Path, kill_at_day: float, unbroken: dict[str, object]
) -> None:
    out = workdir / "crashed"
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(workdir / "data")}
    env.pop("CLOSELOOP_DATABASE_URL", None)
    victim = subprocess.Popen(
        [str(CLI), "demo", "--json", *ARGS, "--out", str(out)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while sim_day(out / "world.db") < kill_at_day and victim.poll() is None:
        assert time.monotonic() < deadline, "the demo did not get going"
        time.sleep(0.02)
    if victim.poll() is not None:  # say why: a demo that stops early is a finding
        assert victim.stderr is not None
        pytest.fail(f"the demo ended ({victim.returncode}) before it could be killed: "
                    f"{victim.stderr.read().decode(errors='replace')[-2000:]}")  # fmt: skip
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    resumed = demo_json(*ARGS, "--out", str(out), "--resume", cwd=workdir)
    invariants(out)
    resumed.pop("database")
    # A message handed to a provider just before the kill, and not yet recorded,
    # goes again after the resume: providers see each message at least once.
    providers, expected = resumed.pop("provider_messages"), dict(unbroken)
    once = expected.pop("provider_messages")
    assert providers["smtp"] >= once["smtp"] and providers["twilio"] >= once["twilio"]
    assert resumed == expected


def test_resume_with_other_options_is_refused(workdir: Path) -> None:
    demo_json("--accounts", "40", "--days", "3", "--out", str(workdir / "r"), cwd=workdir)
    done = run(
        "demo",
        "--accounts",
        "41",
        "--days",
        "3",
        "--out",
        str(workdir / "r"),
        "--resume",
        cwd=workdir,
    )
    assert done.returncode == 2 and "same options" in done.stderr
