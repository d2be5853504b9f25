"""The demo runs a whole rollout: a 5% pilot, promotion on gates, an experiment, a halt."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from pathlib import Path

from tests.acceptance.conftest import CLI, demo_json


def test_the_demo_rolls_out_from_a_pilot_to_everyone_and_compares_the_arms(
    workdir: Path,
) -> None:
    summary = demo_json("--out", str(workdir / "demo"), cwd=workdir)  # 2,000 accounts, 30 days
    rollout = summary["rollout"]
    assert rollout["plan"] == "failed_payment_demo" and rollout["state"] == "completed"
    assert rollout["stages_reached"] == ["pilot", "quarter", "half", "everyone"]
    decisions = rollout["decisions"]
    assert [(d["action"], d["stage"]) for d in decisions] == [
        ("start", "pilot"), ("promote", "pilot"), ("promote", "quarter"),
        ("promote", "half"), ("promote", "everyone"),
    ]  # fmt: skip
    assert all(d["actor"] == "controller" and d["reason"] == "every gate passed"
               for d in decisions[1:])  # fmt: skip
    days = [d["day"] for d in decisions]
    assert days == sorted(days) and days[1] >= 7  # the pilot's minimum duration
    arms = rollout["arms"]
    assert arms["email_first"]["treatment"] == "the workflow's own"
    assert arms["sms_first"]["treatment"] == "variant sms_first"
    assert min(a["cases"] for a in arms.values()) >= 150  # each arm near its sample (173)
    versus = arms["sms_first"]["versus_first_arm"]
    assert versus["arm"] == "email_first" and versus["interval"][0] < versus["difference"]
    assert 0 <= versus["chance_to_win"] <= 1
    assert summary["duplicate_writebacks"] == 0 and summary["live_cases"] == 0
    with sqlite3.connect(workdir / "demo" / "closeloop.db") as db:
        cohorts = dict(db.execute("SELECT cohort, count(*) FROM cases GROUP BY cohort"))
    assert cohorts["control"] > cohorts["enrolled"] > 0  # the pilot's 95% and the rest
    assert cohorts["email_first"] == arms["email_first"]["cases"]
    reported(workdir / "demo", workdir / "demo" / summary["report_html"])


def reported(out: Path, written: Path) -> None:
    """The demo ends by writing the report, and `closeloop report` writes it again: one
    HTML file that needs nothing else, its stylesheet inside and its charts inline SVG."""
    page = written.read_text()
    for shown in ("Outcome report", "From trigger to resolution", "Kaplan", "Channel mix",
                  "Messaging cost per resolution", "Rollout failed_payment_demo",
                  "Completion per stage and arm", "every gate passed"):  # fmt: skip
        assert shown in page, shown
    assert page.count("<svg") >= 6 and 'role="img"' in page
    for stage in ("pilot", "quarter", "half", "everyone"):  # each stage's own cases
        assert f'<th scope="row">{stage}</th>' in page, stage
    self_contained(page)
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(out)}
    env.pop("CLOSELOOP_DATABASE_URL", None)
    again = out / "again.html"
    subprocess.run([str(CLI), "report", "--out", str(again)], env=env, check=True,
                   capture_output=True)  # fmt: skip
    self_contained(again.read_text())
    assert "Rollout failed_payment_demo" in again.read_text()


def test_an_injected_regression_breaks_a_guardrail_and_halts_the_rollout(workdir: Path) -> None:
    out = workdir / "regression"
    summary = demo_json("--inject-regression", "--out", str(out), cwd=workdir)
    rollout = summary["rollout"]
    assert rollout["regression_injected"] and rollout["state"] == "halted"
    assert rollout["stages_reached"] == ["pilot", "quarter", "half"]
    halt = rollout["decisions"][-1]
    assert (halt["action"], halt["stage"], halt["actor"]) == ("halt", "half", "guardrail")
    assert halt["reason"].startswith("duplicate writebacks found by reconciliation")
    assert summary["duplicate_writebacks"] > 0  # what the core holds twice
    with sqlite3.connect(out / "closeloop.db") as db:
        (halted_at,) = db.execute(
            "SELECT at FROM rollout_decisions WHERE action = 'halt'"
        ).fetchone()
        after = dict(db.execute(
            "SELECT cohort, count(*) FROM cases WHERE opened_at > ? GROUP BY cohort", (halted_at,)
        ))  # fmt: skip
        sent = db.execute(
            "SELECT count(*) FROM outbox o JOIN cases c ON c.id = o.case_id "
            "WHERE o.kind = 'message' AND o.status = 'done' AND o.updated_at > ? "
            "AND c.cohort NOT IN ('control', 'outside')",
            (halted_at,),
        ).fetchone()[0]
        found = db.execute(
            "SELECT count(*) FROM case_events WHERE kind = 'writeback_duplicated'"
        ).fetchone()[0]
    assert set(after) == {"control", "ineligible"}  # no enrolment after the halt
    assert after["control"] > 100
    assert sent == 0  # on_halt: pause_outreach holds the enrolled cases' messages
    assert found > 0


def self_contained(page: str) -> None:
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
