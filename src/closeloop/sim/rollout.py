"""The demo's rollout: started with the run, decided on the simulated clock.

`RolloutDriver` is the simulation's stand-in for `closeloop work`'s rollout
tick: on every simulated hour the controller takes its automatic decisions
(halt on a broken guardrail, promote a stage whose gates pass). With a
regression injected, the simulated core ignores idempotency keys and times
out more often from a given stage on: retried writebacks are applied twice,
reconciliation finds them, and the duplicate_writebacks guardrail halts the
rollout. Everything it reads is in the engine's database, so a resumed run
takes the same decisions.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from closeloop.app import App

TICK = timedelta(hours=1)
REGRESSION_TIMEOUT_RATE = 0.05  # the faulty release times out this share of writes


class RolloutDriver:
    def __init__(
        self,
        app: App,
        name: str,
        *,
        start: datetime,
        end: datetime,
        regression_from: str | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.start = start
        self.end = end
        self.regression_from = regression_from  # a stage name, or None
        self._calm_timeouts = app.ledger.timeout_rate

    def apply(self, now: datetime) -> None:
        # On the hour from the run's start: a resumed run ticks at the same instants.
        if (now - self.start) % TICK == timedelta(0):
            self.app.rollouts.tick()
        if self.regression_from is not None:
            live = self.app.rollouts.find(self.name)
            stages = [s.name for s in live.plan.stages]
            injected = live.state == "completed" or live.stage_index >= stages.index(
                self.regression_from
            )
            self.app.ledger.honours_keys = not injected
            self.app.ledger.timeout_rate = (
                REGRESSION_TIMEOUT_RATE if injected else self._calm_timeouts
            )

    def next_change(self, now: datetime) -> datetime | None:
        """The next tick while the rollout can still change, within the run."""
        state = self.app.rollouts.find(self.name).state
        if state in ("completed", "halted") or now >= self.end:
            return None
        return self.start + ((now - self.start) // TICK + 1) * TICK


def summary(app: App, name: str, start: datetime, *, regression: bool) -> dict[str, Any]:
    """The rollout's part of the demo summary: where it got, every decision and why, and
    the experiment's arms over every case they took."""
    live = app.rollouts.find(name)  # not the whole report: its stage-only arms go unused
    arms = {}
    for arm, result in app.rollouts.arms(live, since=start).items():
        vs = result.get("versus_first_arm")
        times = result["time_to_resolution"] or {}
        arms[arm] = {
            "treatment": result["treatment"],
            "cases": result["cases"],
            "completed": result["completed"],
            "completion_rate": round(result["completed"] / result["cases"], 4)
            if result["cases"]
            else None,
            "median_hours_to_resolution": times.get("median_hours"),
            "resolved_within_1d": times.get("resolved_within_1d"),
            "versus_first_arm": None
            if not vs
            else {
                "arm": vs["arm"],
                "difference": round(vs["difference"], 4),
                "interval": [round(x, 4) for x in vs["interval"]],
                "chance_to_win": round(vs["chance_to_win"], 4),
            },
        }
    return {
        "plan": name,
        "state": live.state,
        "stage": live.stage.name,
        "stages_reached": live.stages_reached,
        "regression_injected": regression,
        "decisions": [
            {
                "day": round((d["at"] - start) / timedelta(days=1), 2),
                "action": d["action"],
                "stage": d["stage"],
                "actor": d["actor"],
                "reason": d["reason"],
            }
            for d in app.rollouts.decisions(name)
        ],
        "arms": arms,
    }
