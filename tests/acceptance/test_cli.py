"""The installed CLI in a subprocess, as a user meets it."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.conftest import CLI, demo_json, run
from tests.conftest import EXAMPLE, ROOT


def test_spec_validate_accepts_the_example(workdir: Path) -> None:
    done = run("spec", "validate", str(EXAMPLE), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "valid (failed_payment@1)" in done.stdout


def test_spec_validate_reports_every_problem_with_position(workdir: Path) -> None:
    broken = workdir / "broken.yaml"
    broken.write_text(
        EXAMPLE.read_text()
        .replace("max_attempts: 3", "max_attempts: 3\n  colour: red")
        .replace("rule: case.amount_due > 0.0", "rule: case.amount_due >")
        .replace("template: declined_card_sms,", "template: nope,")
    )
    done = run("spec", "validate", str(broken), cwd=workdir)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith(str(broken))]
    assert len(lines) == 1  # structure first: unknown key
    assert re.match(rf"{re.escape(str(broken))}:\d+:3: identity.colour: unknown key", lines[0])
    broken.write_text(
        EXAMPLE.read_text()
        .replace("rule: case.amount_due > 0.0", "rule: case.amount_due >")
        .replace("template: declined_card_sms,", "template: nope,", 1)  # not the variant's
    )
    done = run("spec", "validate", str(broken), "--json", cwd=workdir)
    assert done.returncode == 2
    problems = json.loads(done.stdout)["problems"]
    assert {p["path"] for p in problems} == {"eligibility[0].rule", "outreach.steps[1].template"}
    assert all(p["line"] > 1 and p["column"] > 1 for p in problems)
    assert "Traceback" not in done.stderr


def test_spec_explain_prints_the_review_page(workdir: Path) -> None:
    done = run("spec", "explain", str(EXAMPLE), cwd=workdir)
    assert done.returncode == 0
    assert "WHAT DONE MEANS, AND WHAT IS WRITTEN BACK" in done.stdout


def test_demo_json_summary_and_same_seed_same_summary(workdir: Path) -> None:
    # Without a rollout every case is enrolled: the customers' paths all show in a short run.
    args = ("--accounts", "150", "--days", "10", "--rollout", "none")
    first = demo_json(*args, "--out", str(workdir / "a"), cwd=workdir)
    second = demo_json(*args, "--out", str(workdir / "b"), cwd=workdir)
    for key in (
        "accounts",
        "cases",
        "terminal_states",
        "completion_rate",
        "median_time_to_resolution_hours",
        "writeback_success_rate",
        "exception_rate",
        "deflection_rate",
        "messages_sent",
        "one_time_codes",
        "deferred",
        "blocked",
        "opt_outs",
        "database",
    ):
        assert key in first
    with sqlite3.connect(workdir / "a" / "world.db") as world:  # the customers' visits, over HTTP
        visits = dict(
            world.execute(
                "SELECT result, count(*) FROM sim_actions WHERE kind = 'session' GROUP BY result"
            ).fetchall()
        )
    assert visits.get("paid", 0) > 0 and visits.get("card_updated", 0) > 0, visits
    assert set(first["deferred"]) == {"quiet_hours", "fatigue_cap"}
    assert first["sms_segments"] >= first["messages_sent"]["sms"] > 0
    assert first["sms_cost"] == pytest.approx(first["sms_segments"] * 0.0083)
    assert first["deferred"]["quiet_hours"] > 0  # simulated customers live in many zones
    assert first["cases"] == sum(first["terminal_states"].values()) and first["live_cases"] == 0
    assert first["duplicate_writebacks"] == 0
    first.pop("database"), second.pop("database")
    assert first == second
    third = demo_json(*args, "--seed", "8", "--out", str(workdir / "c"), cwd=workdir)
    assert third["messages_sent"] != first["messages_sent"]


def test_demo_prints_a_table_for_people(workdir: Path) -> None:
    done = run("demo", "--accounts", "60", "--days", "5", "--out", str(workdir / "d"), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "completion rate" in done.stdout and "report.json" in done.stdout


def test_demo_refuses_bad_flags(workdir: Path) -> None:
    done = run("demo", "--accounts", "0", cwd=workdir)
    assert done.returncode == 2 and "accounts" in done.stderr
    pigeon = run("demo", "--providers", "pigeon", cwd=workdir)
    assert pigeon.returncode == 2 and "--providers must be sink or sandbox" in pigeon.stderr
    both = run("demo", "--cohort", "50", cwd=workdir)
    assert both.returncode == 2 and "--cohort applies without a rollout" in both.stderr
    lone = run("demo", "--rollout", "none", "--inject-regression", cwd=workdir)
    assert lone.returncode == 2 and "--inject-regression needs a rollout" in lone.stderr
    missing = run("demo", "--rollout", "nowhere.yaml", cwd=workdir)
    assert missing.returncode == 2 and "no plan file nowhere.yaml" in missing.stderr


def test_ingest_reports_bad_rows_by_line_and_keeps_good_ones(workdir: Path) -> None:
    accounts = workdir / "accounts"
    run("db", "upgrade", cwd=workdir)
    batch = workdir / "failed.csv"
    batch.write_text(
        "id,type,account_id,amount_due,decline_code,due_date\n"
        "e1,payment.failed,A1,120.50,51,2026-03-01\n"
        "e2,payment.failed,A2,lots,51,2026-03-01\n"
        "e3,payment.failed,A3,80.00,05,2026-03-01\n"
        "e1,payment.failed,A1,120.50,51,2026-03-01\n"
        "e4,payment.unknown,A4,1,51,2026-03-01\n"
    )
    done = run("ingest", str(batch), "--json", cwd=workdir)
    assert done.returncode == 2
    report = json.loads(done.stdout)
    assert report["created"] == 2 and report["duplicate"] == 1 and report["rejected"] == 2
    assert report["errors"][0].startswith(f"{batch}:3: ")
    assert "data.amount_due" in report["errors"][0]
    assert report["errors"][1].startswith(f"{batch}:6: ")
    again = json.loads(run("ingest", str(batch), "--json", cwd=workdir).stdout)
    assert again["created"] == 0 and again["duplicate"] == 3
    lines = workdir / "posted.jsonl"
    lines.write_text(
        '{"id": "p1", "type": "payment.posted", "data": {"account_id": "A1"}}\n{not json\n'
    )
    done = run("ingest", str(lines), "--json", cwd=workdir)
    report = json.loads(done.stdout)
    assert report["closing_events"] == 1 and report["cases_closed"] == 1
    assert report["errors"][0].startswith(f"{lines}:2: not JSON")
    assert not accounts.exists()


@pytest.mark.parametrize("args", [["case", "show", "case_nope"], ["link", "case_nope"]])
def test_unknown_case_is_a_clear_error(workdir: Path, args: list[str]) -> None:
    done = run(*args, cwd=workdir)
    assert done.returncode == 2
    assert "no case case_nope" in done.stderr and "Traceback" not in done.stderr


def test_readme_quick_start_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python3 tasks.py demo" in readme and "python3 tasks.py test" in readme
    assert "python3 tasks.py test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.postgres
def test_demo_on_postgresql_matches_sqlite(workdir: Path, postgres_url: str) -> None:
    args = ("--accounts", "80", "--days", "6", "--seed", "3")
    on_sqlite = demo_json(*args, "--out", str(workdir / "lite"), cwd=workdir)
    on_postgres = demo_json(
        *args,
        "--out",
        str(workdir / "pg"),
        cwd=workdir,
        env={"CLOSELOOP_DATABASE_URL": postgres_url},
    )
    assert on_postgres["database"].startswith("postgresql")
    on_sqlite.pop("database"), on_postgres.pop("database")
    assert on_postgres == on_sqlite


def test_unreachable_database_is_a_failure_without_traceback(workdir: Path) -> None:
    done = run(
        "db",
        "upgrade",
        cwd=workdir,
        env={"CLOSELOOP_DATABASE_URL": "postgresql://127.0.0.1:1/nope"},
    )
    assert done.returncode == 1
    assert "database upgrade failed" in done.stderr and "Traceback" not in done.stderr


def test_template_preview_renders_a_step_for_a_case(workdir: Path) -> None:
    out = workdir / "preview"
    demo_json("--accounts", "40", "--days", "2", "--out", str(out), cwd=workdir)
    with sqlite3.connect(out / "closeloop.db") as db:
        (case_id,) = db.execute("SELECT id FROM cases ORDER BY id LIMIT 1").fetchone()
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(out)}
    env.pop("CLOSELOOP_DATABASE_URL", None)

    def preview(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), "template", "preview", *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    sms = preview("failed_payment", "reminder_sms", "--case", case_id, "--locale", "es", "--json")
    assert sms.returncode == 0, sms.stderr
    shown = json.loads(sms.stdout)
    assert shown["channel"] == "sms" and shown["locale"] == "es"
    assert "Responda STOP" in shown["body"] and "/m/PREVIEW" in shown["body"]
    assert (shown["encoding"], shown["segments"]) == ("GSM-7", 1)
    email = preview("failed_payment", "first_email", "--case", case_id, "--locale", "en")
    assert email.returncode == 0 and "/u/PREVIEW" in email.stdout and "subject:" in email.stdout
    bad = preview("failed_payment", "third_pigeon", "--case", case_id)
    assert bad.returncode == 2 and "has no step 'third_pigeon'" in bad.stderr
    assert "first_email" in bad.stderr
    other = preview("kyc_refresh", "first_email", "--case", case_id)
    assert other.returncode == 2 and "belongs to workflow failed_payment@1" in other.stderr


def test_demo_over_the_sandbox_providers_matches_the_sink(workdir: Path) -> None:
    """Real SMTP and HTTP on loopback carry the messages; the run is the same run."""
    args = ("--accounts", "120", "--days", "6", "--seed", "11")
    sink = demo_json(*args, "--providers", "sink", "--out", str(workdir / "sink"), cwd=workdir)
    real = demo_json(*args, "--out", str(workdir / "real"), cwd=workdir)  # sandboxes: the default
    sent = real.pop("provider_messages")
    messages, codes = real["messages_sent"], real["one_time_codes"]
    assert sent["smtp"] == messages["email"] + codes["email"] > 0
    assert sent["twilio"] == messages["sms"] + messages["whatsapp"] + codes["sms"] > 0
    for summary in (sink, real):
        summary.pop("database"), summary.pop("providers")
    assert real == sink
    with sqlite3.connect(workdir / "real" / "sandboxes" / "smtp.db") as db:
        raw = db.execute("SELECT raw FROM smtp_received LIMIT 1").fetchone()[0]
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in raw


def test_stats_and_bucket_commands_for_people_planning_a_rollout(workdir: Path) -> None:
    compared = run(
        "stats", "compare", "--control", "1396/3000", "--treatment", "2422/3461",
        "--sequential", "--json", cwd=workdir,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["method"] == "sequential" and result["n_star"] == 5000
    assert [round(x, 5) for x in result["lift_interval"]] == [0.40098, 0.60675]
    powered = json.loads(
        run(
            "stats", "power", "--p1", "0.5", "--p2", "0.75", "--n", "50", "--json", cwd=workdir
        ).stdout
    )
    assert round(powered["power"], 7) == 0.7401659
    mismatch = run("stats", "srm", "5000", "5600", cwd=workdir)
    assert mismatch.returncode == 1 and "MISMATCH" in mismatch.stdout
    bucket = run("rollout", "bucket", "--group", "g", "--unit", "u", "--json", cwd=workdir)
    assert 1 <= json.loads(bucket.stdout)["bucket"] <= 100
    for args, message in (
        (("stats", "compare", "--control", "12/x", "--treatment", "1/2"), "expected SUCCESSES/N"),
        (("stats", "compare", "--control", "5/4", "--treatment", "1/2"), "between 0 and n"),
        (("stats", "power", "--p1", "0.5", "--p2", "0.6"), "exactly one of --n"),
        (("stats", "srm", "10", "20", "--weights", "1"), "2 counts but 1 weights"),
    ):
        refused = run(*args, cwd=workdir)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr


def test_rollout_validate_shows_each_arm_sample_or_every_problem(workdir: Path) -> None:
    plan = ROOT / "examples" / "rollouts" / "failed_payment.yaml"
    shown = run("rollout", "validate", str(plan), "--json", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    stages = json.loads(shown.stdout)["stages"]
    assert [s["share"] for s in stages] == [5, 25, 100]
    assert stages[0]["experiment"]["sample_per_arm"] == 388
    bad = workdir / "plan.yaml"
    bad.write_text(plan.read_text().replace("at_most: 0.05}", "at_most: 5}", 1))
    refused = run("rollout", "validate", str(bad), cwd=workdir)
    assert refused.returncode == 2
    assert "plan.yaml:25:43: stages[0].gates[1].at_most: Input should be less" in refused.stderr
    bad.write_text(plan.read_text().replace("share: 25", "share: 3"))
    refused = run("rollout", "validate", str(bad), cwd=workdir)
    assert refused.returncode == 2
    assert "stages[1].share: each share must be larger than the last (5%)" in refused.stderr


def test_rollout_status_reads_the_gate_table_from_a_run(workdir: Path) -> None:
    out = workdir / "half"
    demo_json("--accounts", "300", "--days", "10", "--rollout", "none", "--cohort", "50",
              "--out", str(out), cwd=workdir)  # fmt: skip
    plan = ROOT / "examples" / "rollouts" / "failed_payment.yaml"
    env = {"CLOSELOOP_DATA_DIR": str(out)}
    shown = run("rollout", "status", "--plan", str(plan), "--stage", "quarter", "--json",
                cwd=workdir, env=env)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["stage"] == "quarter" and status["enrolled"]["cases"] > 50
    assert status["control"]["cases"] > 50 and status["control"]["completed"] == 0
    criteria = [g["criterion"] for g in status["gates"]]
    assert criteria == [
        "writeback_success >= 99.50%",
        "exception_rate <= 5.00%",
        "resolution not worse than control by 1.0% points",
    ]
    assert all(g["passed"] in (True, False) and g["interval"] for g in status["gates"])
    assert status["minimums"][1] == {
        "criterion": "at least 2000 cases", "value": status["enrolled"]["cases"],
        "interval": None, "passed": False, "detail": "",
    }  # fmt: skip
    unknown = run("rollout", "status", "--plan", str(plan), "--stage", "moon", cwd=workdir, env=env)
    assert (
        unknown.returncode == 2
        and "has no stage 'moon' (pilot, quarter, everyone)" in unknown.stderr
    )


def test_rollout_start_status_halt_resume_from_the_command_line(workdir: Path) -> None:
    plan = ROOT / "examples" / "rollouts" / "failed_payment.yaml"
    run("db", "upgrade", cwd=workdir)
    started = run("rollout", "start", str(plan), "--reason", "risk signed off", "--actor", "ana",
                  cwd=workdir)  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert "stage pilot enrols 5% of eligible failed_payment cases" in started.stdout
    assert "arm email_first: the workflow's own" in started.stdout
    assert "arm sms_first: variant sms_first" in started.stdout
    refused = run("rollout", "promote", "failed_payment_rollout", "--reason", "eager", cwd=workdir)
    assert refused.returncode == 2 and "may not be promoted" in refused.stderr
    halted = run("rollout", "halt", "failed_payment_rollout", "--reason", "branch complaint",
                 "--actor", "ana", cwd=workdir)  # fmt: skip
    assert halted.returncode == 0 and "now halted at stage pilot" in halted.stdout
    assert run("rollout", "resume", "failed_payment_rollout", "--reason", "answered",
               cwd=workdir).returncode == 0  # fmt: skip
    status = json.loads(run("rollout", "status", "failed_payment_rollout", "--json",
                            cwd=workdir).stdout)  # fmt: skip
    assert status["state"] == "running" and status["stage"] == "pilot"
    assert [(d["action"], d["actor"]) for d in status["decisions"]][:2] == [
        ("start", "ana"), ("halt", "ana")
    ]  # fmt: skip
    assert status["gates"][0]["passed"] is None  # no cases yet
    table = run("rollout", "status", "failed_payment_rollout", cwd=workdir,
                env={"COLUMNS": "200"}).stdout  # fmt: skip
    assert "variant sms_first" in table and "business as usual" in table
    missing = run("rollout", "status", "nowhere", cwd=workdir)
    assert missing.returncode == 2 and "no rollout 'nowhere'" in missing.stderr
