"""The rollout controller: enrolment by the live stage, decisions recorded, halts and promotion."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from closeloop.app import App, Settings, TriggerIn, build
from closeloop.clock import SimClock
from closeloop.errors import StateError
from closeloop.store.tables import outbox
from closeloop.web import create_api
from tests.conftest import EXAMPLE, NOW, bearer
from tests.integration.test_runtime import ACCOUNT, trigger

ACCOUNTS = [f"A{i}" for i in range(1200)]
PLAN = """
rollout: pilot_rollout
version: 1
workflow: failed_payment
promotion: {promotion}
sequential_tuning: 100
stages:
  - name: pilot
    share: 5
    min_duration: 1d
    experiment:
      name: first_channel
      arms: [{{name: email_first, weight: 1}}, {{name: sms_first, weight: 1}}]
      hypothesis: {{baseline: 0.4, minimum_detectable_effect: 0.5}}
    gates:
      - {{metric: exception_rate, at_most: 0.5}}
  - name: everyone
    share: 100
guardrails:
  - {{metric: opt_out_rate, above: 0.2}}
"""


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE])
    built = build(settings, clock=SimClock(NOW))
    built.ledger.add_accounts([{**ACCOUNT, "account_id": a} for a in ACCOUNTS])
    yield built
    built.close()


def open_cases(app: App, tag: str) -> Counter[str]:
    results = app.runtime.intake([trigger(f"{tag}-{a}", a) for a in ACCOUNTS])
    return Counter(app.runtime.case(r.case_id).cohort for r in results if r.case_id)


def test_the_live_stage_enrols_its_share_into_arms_and_promotes_on_its_gates(app: App) -> None:
    app.rollouts.start(PLAN.format(promotion="approval"), filename="plan.yaml",
                       actor="ops@bank", reason="pilot approved by risk")  # fmt: skip
    cohorts = open_cases(app, "t1")
    enrolled = cohorts["email_first"] + cohorts["sms_first"]
    assert 30 <= enrolled <= 100 and cohorts["control"] == len(ACCOUNTS) - enrolled
    assert cohorts["email_first"] >= 13 and cohorts["sms_first"] >= 13  # 13 needed per arm
    with pytest.raises(StateError, match="may not be promoted: at least 1 days in the stage"):
        app.rollouts.promote("pilot_rollout", actor="ops@bank", reason="looks fine")
    app.runtime.intake(  # some of the control pay through another channel
        [TriggerIn(id=f"paid-{a}", type="payment.posted", data={"account_id": a})
         for a in ACCOUNTS[::7]]
    )  # fmt: skip
    arms = app.rollouts.report("pilot_rollout")["arms"]
    assert set(arms) == {"email_first", "sms_first"}
    assert arms["email_first"]["cases"] == cohorts["email_first"]
    assert arms["email_first"]["versus_control"]["interval"][0] < 0  # few cases: a wide interval
    clock = app.clock
    assert isinstance(clock, SimClock)
    clock.advance(timedelta(days=2))
    assert not app.rollouts.tick()  # under approval nothing is promoted by itself
    app.rollouts.promote("pilot_rollout", actor="ops@bank", reason="gates passed, risk agrees")
    live = app.rollouts.get("pilot_rollout")
    assert live.stage.name == "everyone" and live.stage_started_at == clock.now()
    assert set(open_cases(app, "t5")) == {"enrolled"}  # everyone, no experiment
    clock.advance(timedelta(days=8))
    done = app.rollouts.promote("pilot_rollout", actor="ops@bank", reason="done")
    assert done.state == "completed"
    with pytest.raises(StateError, match="is completed"):
        app.rollouts.get("pilot_rollout")
    (promoted, *_) = [d for d in app.rollouts.decisions("pilot_rollout")
                      if d["action"] == "promote"]  # fmt: skip
    assert promoted["stage"] == "pilot" and promoted["data"]["promotable"] is True


def test_halt_stops_enrolment_and_every_decision_is_recorded(app: App) -> None:
    app.rollouts.start(PLAN.format(promotion="approval"), filename="plan.yaml",
                       actor="ops@bank", reason="go")  # fmt: skip
    app.rollouts.hold("pilot_rollout", actor="ops@bank", reason="waiting for the weekend")
    app.rollouts.halt("pilot_rollout", actor="ops@bank", reason="complaint from a branch")
    cohorts = open_cases(app, "t2")
    assert set(cohorts) == {"control"}  # no new enrolments while halted
    with pytest.raises(StateError, match="halted: resume it first"):
        app.rollouts.promote("pilot_rollout", actor="ops@bank", reason="x")
    app.rollouts.resume("pilot_rollout", actor="ops@bank", reason="branch answered")
    assert "email_first" in open_cases(app, "t3")
    log = app.rollouts.decisions("pilot_rollout")
    assert [(d["action"], d["actor"], d["reason"]) for d in log] == [
        ("start", "ops@bank", "go"),
        ("hold", "ops@bank", "waiting for the weekend"),
        ("halt", "ops@bank", "complaint from a branch"),
        ("resume", "ops@bank", "branch answered"),
    ]
    assert log[2]["data"]["gates"][0]["criterion"] == "exception_rate <= 50.00%"
    with pytest.raises(StateError, match="was started before"):
        app.rollouts.start(PLAN.format(promotion="approval"), filename="plan.yaml",
                           actor="ops@bank", reason="again")  # fmt: skip


def test_a_guardrail_halts_by_itself_and_automatic_promotion_moves_on(app: App) -> None:
    app.rollouts.start(PLAN.format(promotion="automatic"), filename="plan.yaml",
                       actor="ops@bank", reason="go")  # fmt: skip
    results = app.runtime.intake([trigger(f"t4-{a}", a) for a in ACCOUNTS])
    enrolled = [r.case_id for r in results
                if r.case_id and app.runtime.case(r.case_id).cohort != "control"]  # fmt: skip
    for case_id in enrolled[: len(enrolled) // 2]:  # half of them opt out: over 20%
        app.service.opt_out(case_id, "sms", key=f"stop-{case_id}")
    assert app.rollouts.tick() == ["pilot_rollout: halted"]
    (halt,) = [d for d in app.rollouts.decisions("pilot_rollout") if d["action"] == "halt"]
    assert halt["actor"] == "guardrail" and halt["reason"].startswith("opt_out_rate: ")
    assert app.rollouts.get("pilot_rollout").state == "halted"


def test_the_same_decisions_over_the_api(app: App) -> None:
    client = TestClient(create_api(app), headers=bearer(app, "operator"))
    app.rollouts.start(PLAN.format(promotion="approval"), filename="plan.yaml",
                       actor="ops@bank", reason="go")  # fmt: skip
    status = client.get("/v1/rollouts/pilot_rollout")
    assert status.status_code == 200 and status.json()["state"] == "running"
    assert status.json()["decisions"][0]["action"] == "start"
    early = client.post("/v1/rollouts/pilot_rollout/promote", json={"reason": "x"})
    assert early.status_code == 409 and "may not be promoted" in early.json()["detail"]
    unsaid = client.post("/v1/rollouts/pilot_rollout/halt", json={})
    assert unsaid.status_code == 422
    halted = client.post("/v1/rollouts/pilot_rollout/halt", json={"reason": "branch complaint"})
    assert halted.status_code == 200 and halted.json()["state"] == "halted"
    # The decision is the caller's: the token's name, not a name the body gives.
    assert app.rollouts.decisions("pilot_rollout")[-1]["actor"] == "token:tests-operator"
    said = client.post("/v1/rollouts/pilot_rollout/resume", json={"reason": "x", "actor": "a"})
    assert said.status_code == 422
    assert client.get("/v1/rollouts/nowhere").status_code == 404
    wrong = client.post("/v1/rollouts/pilot_rollout/explode", json={"reason": "x"})
    assert wrong.status_code == 422


def sent_to(app: App, case_ids: set[str | None]) -> int:
    with app.store.read() as tx:
        rows = tx.c.execute(
            sa.select(outbox.c.case_id).where(outbox.c.kind == "message", outbox.c.status == "done")
        )
        return sum(1 for (case_id,) in rows if case_id in case_ids)


def test_a_halt_pauses_the_outreach_of_enrolled_cases_until_resumed(app: App) -> None:
    app.rollouts.start(PLAN.format(promotion="approval"), filename="plan.yaml",
                       actor="ops@bank", reason="go")  # fmt: skip
    results = app.runtime.intake([trigger(f"t6-{a}", a) for a in ACCOUNTS[:300]])
    enrolled = {r.case_id for r in results
                if r.case_id and app.runtime.case(r.case_id).cohort != "control"}  # fmt: skip
    assert enrolled
    app.rollouts.halt("pilot_rollout", actor="ops@bank", reason="complaint")
    app.dispatcher.send_messages()
    with app.store.read() as tx:
        held = tx.contact_decisions()["deferred"]
    assert held.get("rollout_halted", 0) >= len(enrolled)
    assert sent_to(app, enrolled) == 0
    app.rollouts.resume("pilot_rollout", actor="ops@bank", reason="answered")
    clock = app.clock
    assert isinstance(clock, SimClock)
    clock.advance(timedelta(hours=1, minutes=1))
    app.work()
    assert sent_to(app, enrolled) >= len(enrolled)


def test_each_arm_gets_its_treatment_and_the_report_reads_every_arm(app: App) -> None:
    """The example spec's variant `sms_first` is the cadence its arm's cases get."""
    app.rollouts.start(PLAN.format(promotion="approval"), filename="plan.yaml",
                       actor="ops@bank", reason="go")  # fmt: skip
    results = app.runtime.intake([trigger(f"t7-{a}", a) for a in ACCOUNTS])
    cohort = {r.case_id: app.runtime.case(r.case_id).cohort for r in results if r.case_id}
    with app.store.read() as tx:
        rows = tx.c.execute(sa.select(outbox.c.case_id, outbox.c.payload)
                            .where(outbox.c.kind == "message")).all()  # fmt: skip
    first = {}
    for case_id, payload in rows:
        first.setdefault(case_id, payload["channel"])
    by_arm = {arm: {first[c] for c, a in cohort.items() if a == arm and c in first}
              for arm in ("email_first", "sms_first")}  # fmt: skip
    assert by_arm == {"email_first": {"email"}, "sms_first": {"sms"}}
    step = app.runtime.spec_for(app.runtime.case(next(c for c, a in cohort.items()
                                                      if a == "sms_first")))  # fmt: skip
    assert step.spec.outreach.steps[0].name == "first_sms"

    report = app.rollouts.report("pilot_rollout")
    sms = report["arms"]["sms_first"]
    assert report["arms"]["email_first"]["treatment"] == "the workflow's own"
    assert sms["treatment"] == "variant sms_first"
    assert sms["versus_first_arm"] is None  # nothing completed yet: no comparison
    assert sms["time_to_resolution"]["resolved_within_1d"] == 0.0
    assert report["control"]["cases"] == list(cohort.values()).count("control")
    assert report["stages_reached"] == ["pilot"]
    clock = app.clock
    assert isinstance(clock, SimClock)
    clock.advance(timedelta(days=2))
    app.runtime.intake(  # a third of everyone pays through another channel on day 2
        [TriggerIn(id=f"paid7-{a}", type="payment.posted", data={"account_id": a})
         for a in ACCOUNTS[::3]]
    )  # fmt: skip
    report = app.rollouts.report("pilot_rollout")
    control = report["control"]["time_to_resolution"]
    assert 0.25 < control["resolved_within_3d"] < 0.42 and control["resolved_within_1d"] == 0
    assert control["median_hours"] is None  # never half: the curve stays above one half
    app.rollouts.promote("pilot_rollout", actor="ops@bank", reason="gates passed")
    promoted = app.rollouts.decisions("pilot_rollout")[-1]
    assert set(promoted["data"]["arms"]) == {"email_first", "sms_first"}  # the evidence kept
    clock.advance(timedelta(days=8))
    app.rollouts.promote("pilot_rollout", actor="ops@bank", reason="done")
    done = app.rollouts.report("pilot_rollout")  # a completed rollout still reports
    assert done["state"] == "completed" and done["stages_reached"] == ["pilot", "everyone"]


def test_a_paused_rollout_does_not_hold_the_messages_of_closed_cases_forever(app: App) -> None:
    app.rollouts.start(PLAN.format(promotion="approval"), filename="plan.yaml",
                       actor="ops@bank", reason="go")  # fmt: skip
    results = app.runtime.intake([trigger(f"t8-{a}", a) for a in ACCOUNTS[:300]])
    app.rollouts.halt("pilot_rollout", actor="ops@bank", reason="complaint")
    app.work()
    clock = app.clock
    assert isinstance(clock, SimClock)
    clock.advance(timedelta(days=9))  # the enrolled cases expire while the rollout is halted
    app.work()
    with app.store.read() as tx:
        waiting = tx.c.execute(
            sa.select(sa.func.count()).select_from(outbox)
            .where(outbox.c.status.not_in(("done", "failed")))
        ).scalar_one()  # fmt: skip
    assert waiting == 0 and all(app.runtime.case(r.case_id).status.terminal
                                for r in results if r.case_id)  # fmt: skip


def test_an_arm_without_the_known_fact_check_pays_without_it(
    database_url: str, tmp_path: Path
) -> None:
    """'With and without a known-fact check before payment': a variant of `identity`."""
    spec = tmp_path / "failed_payment.yaml"
    spec.write_text(EXAMPLE.read_text().replace(
        "variants:\n",
        "variants:\n  no_check:\n    description: the link alone opens the mini-app\n"
        "    identity: {known_facts: []}\n",
        1,
    ))  # fmt: skip
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[spec])
    app = build(settings, clock=SimClock(NOW))
    try:
        app.ledger.add_accounts([{**ACCOUNT, "account_id": a} for a in ACCOUNTS[:400]])
        plan = PLAN.format(promotion="approval").replace("sms_first", "no_check")
        app.rollouts.start(plan, filename="plan.yaml", actor="ops", reason="go")
        results = app.runtime.intake([trigger(f"t9-{a}", a) for a in ACCOUNTS[:400]])
        cohort = {r.case_id: app.runtime.case(r.case_id).cohort for r in results if r.case_id}
        unchecked = next(c for c, arm in cohort.items() if arm == "no_check")
        checked = next(c for c, arm in cohort.items() if arm == "email_first")
        app.service.submit(unchecked, "update_card", {"token_ref": "tok_1"}, key="s1")
        assert app.runtime.case(unchecked).outcome is not None
        with pytest.raises(StateError):
            app.service.submit(checked, "update_card", {"token_ref": "tok_2"}, key="s2")
        arms = app.rollouts.report("pilot_rollout")["arms"]
        assert arms["no_check"]["treatment"] == "variant no_check"
    finally:
        app.close()
