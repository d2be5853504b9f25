"""Failure drills as an operator runs them: `closeloop drill --scenario NAME`.

Each scenario runs the demo's workflow against the reference core (its own
process, over HTTP) with its faults, and must end with nothing lost, nothing
doubled and nothing stuck; each must also show that its faults bit. The
checker itself is tested on a finished drill's databases, with an effect
taken out of the core's ledger and one put in twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from closeloop.app import Settings, build
from closeloop.clock import SimClock
from closeloop.connectors.reference_core import core_effects
from closeloop.engine import Status
from closeloop.sim.drill import SCENARIOS, check
from closeloop.sim.runner import START
from closeloop.store.database import create_engine
from tests.acceptance.conftest import run

ARGS = ("--accounts", "150", "--days", "8", "--seed", "3")


def drill(tmp_path: Path, scenario: str) -> dict[str, Any]:
    done = run(
        "drill", "--scenario", scenario, *ARGS, "--out", str(tmp_path / "out"), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def bit(report: dict[str, Any]) -> bool:
    """The faults showed: a writeback was retried or held, or the breaker opened."""
    return report["writeback_retries"] > 0 or report["breaker_openings"] > 0


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_keeps_the_invariants(tmp_path: Path, scenario: str) -> None:
    report = drill(tmp_path, scenario)
    assert report["invariants_hold"] is True
    assert report["outcomes_lost"] == report["duplicate_effects"] == report["stuck_cases"] == 0
    assert report["phantom_writebacks"] == 0
    assert report["outcomes_accepted"] > 20
    assert report["core_effects"] >= report["outcomes_accepted"]
    assert report["writebacks"]["pending"] == 0
    assert report["core_effects"] == report["writebacks"]["done"]
    # closeloop's reconciliation, through the same faults, agrees with the core's ledger
    assert report["reconciliation"]["cases"] > 20
    assert report["reconciliation"]["duplicated"] == report["reconciliation"]["missing"] == 0
    assert bit(report), report
    if scenario in ("outage", "flapping"):
        assert report["breaker_openings"] >= 1
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["scenario"] == scenario


def test_the_checker_finds_a_lost_outcome_and_a_doubled_effect(tmp_path: Path) -> None:
    drill(tmp_path, "malformed")
    out = tmp_path / "out"
    settings = Settings(data_dir=out, database_url=f"sqlite:///{out / 'closeloop.db'}")
    app = build(settings, clock=SimClock(START), upgrade=False)
    core_db = create_engine(f"sqlite:///{out / 'sandboxes' / 'core.db'}")
    scenario = SCENARIOS["malformed"]
    try:
        assert check(app, scenario, core_db)["invariants_hold"] is True
        with app.store.read() as tx:
            resolved = tx.first_case_id(Status.RESOLVED)
        assert resolved is not None
        shown = run(
            "case", "show", resolved, "--json", cwd=tmp_path, env={"CLOSELOOP_DATA_DIR": str(out)}
        )
        assert shown.returncode == 0, shown.stderr
        trail = json.loads(shown.stdout)
        assert trail["trigger"]["data"]["account_id"] == trail["account_id"]
        assert trail["outcome"] and trail["customer_inputs"]
        assert trail["identity"]["level"] != "none"
        assert trail["writebacks"] and {w["state"] for w in trail["writebacks"]} == {"succeeded"}
        assert all(w["reference"] and w["idempotency_key"] for w in trail["writebacks"])
        with core_db.begin() as c:
            first = c.execute(sa.select(core_effects).order_by(core_effects.c.at)).first()
            assert first is not None
            c.execute(core_effects.delete().where(core_effects.c.id == first.id))
        broken = check(app, scenario, core_db)
        assert broken["outcomes_lost"] == 1 and broken["phantom_writebacks"] == 1
        assert broken["invariants_hold"] is False
        with core_db.begin() as c:
            again = dict(first._mapping)
            c.execute(core_effects.insert(), [again, {**again, "id": "dup-1"}])
        doubled = check(app, scenario, core_db)
        assert doubled["outcomes_lost"] == 0 and doubled["duplicate_effects"] == 2
        assert doubled["invariants_hold"] is False
    finally:
        app.close()
        core_db.dispose()


def test_an_unknown_scenario_is_refused(tmp_path: Path) -> None:
    done = run("drill", "--scenario", "earthquake", cwd=tmp_path)
    assert done.returncode == 2
    assert "--scenario must be one of outage, partial-timeout" in done.stderr
