"""The rollout controller: runs a plan stage by stage, and records every decision.

A rollout is started from its plan and is then *running*, *held* (no
automatic promotion; enrolment goes on), *halted* (no new enrolments: new
cases are left out as business as usual) or *completed* (its last stage was
promoted past: everyone is enrolled). Each decision (start, promote, hold,
halt, resume) is recorded with who or what took it, why, and the gate table
it was based on. `tick` is the automatic part: a broken guardrail halts the
rollout at once, and with `promotion: automatic` a stage whose gates pass
is promoted.

While a rollout is live, the runtime asks `enrolment` which cohort a new
case belongs to: outside the stage's segment, not in the stage's share, or
enrolled (in an experiment's arm when the stage has one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from scipy.stats import binomtest

from closeloop.clock import Clock
from closeloop.errors import InputError, NotFound, StateError
from closeloop.rollout import arm, in_cohort
from closeloop.rollout.gates import Tally, Verdict, judge
from closeloop.rollout.plan import RolloutPlan, Stage, load_plan
from closeloop.spec.loader import load_spec
from closeloop.spec.model import Spec
from closeloop.spec.rules import ACCOUNT_FIELDS, CompiledRule, compile_rule
from closeloop.stats import Proportion, Survival, compare, kaplan_meier
from closeloop.store import Store, Tx

LIVE = ("running", "held", "halted")
CONTROL, OUTSIDE, ENROLLED = "control", "outside", "enrolled"


@dataclass(frozen=True, kw_only=True)
class Live:
    """A live rollout as the runtime and the CLI need it."""

    name: str
    plan: RolloutPlan
    stage_index: int
    state: str
    stage_started_at: datetime
    segment: CompiledRule | None

    @property
    def stage(self) -> Stage:
        return self.plan.stages[self.stage_index]

    @property
    def stages_reached(self) -> list[str]:
        """The stages the rollout has been in, in order (all of them once completed)."""
        last = len(self.plan.stages) if self.state == "completed" else self.stage_index + 1
        return [stage.name for stage in self.plan.stages[:last]]


class Rollouts:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._segments: dict[tuple[str, int, int], CompiledRule | None] = {}
        self._specs: dict[str, Spec | None] = {}
        self._plans: dict[tuple[str, int], RolloutPlan] = {}

    # -- reading ------------------------------------------------------------------------
    def _live(self, row: dict[str, Any]) -> Live:
        plan = self._plans.get((row["name"], row["version"]))
        if plan is None:  # a plan is stored once per version and never changes
            plan = self._plans[row["name"], row["version"]] = load_plan(
                row["plan"], filename=row["name"]
            )
        key = (row["name"], row["version"], row["stage"])
        if key not in self._segments:
            segment = plan.stages[row["stage"]].segment
            self._segments[key] = (
                compile_rule("segment", segment, variables={"account": ACCOUNT_FIELDS})
                if segment
                else None
            )
        return Live(
            name=row["name"],
            plan=plan,
            stage_index=row["stage"],
            state=row["state"],
            stage_started_at=row["stage_started_at"],
            segment=self._segments[key],
        )

    def live_for(self, tx: Tx, workflow: str) -> Live | None:
        row = tx.live_rollout(workflow)
        return self._live(row) if row else None

    def find(self, name: str) -> Live:
        """A rollout in any state, completed ones too."""
        with self.store.read() as tx:
            row = tx.rollout(name)
        if row is None:
            raise NotFound(f"no rollout {name!r}")
        return self._live(row)

    def get(self, name: str) -> Live:
        with self.store.read() as tx:
            row = tx.rollout(name)
        if row is None:
            raise NotFound(f"no rollout {name!r}")
        if row["state"] == "completed":
            raise StateError(f"rollout {name} is completed")
        return self._live(row)

    def decisions(self, name: str) -> list[dict[str, Any]]:
        with self.store.read() as tx:
            if tx.rollout(name) is None:
                raise NotFound(f"no rollout {name!r}")
            return tx.rollout_decisions(name)

    def _tallies(
        self, live: Live, window: timedelta | None = None, since: datetime | None = None
    ) -> tuple[Tally, dict[str, Tally]]:
        """The control's tally and each enrolled cohort's (arms, or `enrolled`): this stage,
        its last `window`, or everything `since`."""
        now = self.clock.now()
        if since is None:
            since = live.stage_started_at
            if window is not None:
                since = max(since, now - window)
        with self.store.read() as tx:  # up to and including now
            tallies = tx.rollout_tallies(live.plan.workflow, since, now + timedelta(microseconds=1))
        control = Tally(**tallies.pop(CONTROL, {}))
        tallies.pop(OUTSIDE, None)
        return control, {name: Tally(**counts) for name, counts in tallies.items()}

    def verdict(self, live: Live) -> Verdict:
        """The current stage's gate table, over the cases opened since the stage began."""
        control, cohorts = self._tallies(live)
        named = {a.name for a in live.stage.experiment.arms} if live.stage.experiment else set()
        windows = {}
        for window in {g.window for g in live.stage.gates}:  # each gate over its own window
            in_window, by_cohort = self._tallies(live, window)
            windows[window] = (_sum(by_cohort.values()), in_window)
        enrolled = _sum(cohorts.values())
        with self.store.read() as tx:  # a duplicate halts whichever stage its case opened in
            started = tx.rollout_started_at(live.name) or live.stage_started_at
            doubled = tx.duplicated_cases(live.plan.workflow, started)
        return judge(
            live.plan,
            live.stage,
            enrolled=replace(enrolled, duplicate_writebacks=doubled),
            control=control,
            arms={k: v for k, v in cohorts.items() if k in named},
            elapsed=self.clock.now() - live.stage_started_at,
            windows=windows,
        )

    def arms(
        self,
        live: Live,
        since: datetime | None = None,
        times: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Each arm of the stage's experiment: its treatment, resolution against the control's,
        completion against the first arm's (both on the sequential interval, as gbstats), and
        time to resolution; over the stage, or every case opened `since`."""
        if live.stage.experiment is None:
            return {}
        control, cohorts = self._tallies(live, since=since)
        times = self.times(live, since) if times is None else times
        n_star = live.plan.sequential_tuning
        variants = self._variants(live.plan.workflow)
        arms = live.stage.experiment.arms
        first = cohorts.get(arms[0].name, Tally())
        results: dict[str, dict[str, Any]] = {}
        for a in arms:
            t = cohorts.get(a.name, Tally())
            results[a.name] = {
                "weight": a.weight,
                "treatment": f"variant {a.name}" if a.name in variants else "the workflow's own",
                "cases": t.cases,
                "completed": t.completed,
                "resolved": t.resolved,
                "versus_control": _versus(
                    control.resolved, control.cases, t.resolved, t.cases, n_star=n_star
                ),
                "time_to_resolution": times.get(a.name),
            }
            if a is not arms[0]:
                vs = _versus(first.completed, first.cases, t.completed, t.cases,
                             metric="completion", n_star=n_star)  # fmt: skip
                results[a.name]["versus_first_arm"] = vs and {"arm": arms[0].name, **vs}
        return results

    def times(self, live: Live, since: datetime | None = None) -> dict[str, dict[str, Any]]:
        """Time to resolution by cohort since the stage began, or `since` (Kaplan-Meier: a
        case not resolved yet counts as unresolved up to its age, or up to when it closed)."""
        follow_up = self._follow_up(live.plan.workflow)  # a left-out case: as long as any
        with self.store.read() as tx:
            curves = resolution_curves(
                tx, live.plan.workflow, since or live.stage_started_at, self.clock.now(), follow_up
            )
        out = {}
        for cohort, curve in curves.items():
            out[cohort] = {
                "median_hours": None if curve.median is None else round(curve.median, 2),
                "resolved_within_1d": round(1 - curve.at(24), 4),
                "resolved_within_3d": round(1 - curve.at(72), 4),
                "resolved_within_7d": round(1 - curve.at(168), 4),
            }
        return out

    def over_time(self, name: str) -> dict[str, Any]:
        """Day by day since the rollout started, per cohort: cases, completion and resolution
        with their 95% Wilson intervals; the stage each day began in; and the Kaplan-Meier
        curve of time to resolution per cohort (hours, share still unresolved)."""
        live = self.find(name)
        started = min((d["at"] for d in self.decisions(name)), default=live.stage_started_at)
        now = self.clock.now()
        follow_up = self._follow_up(live.plan.workflow)
        with self.store.read() as tx:
            rows = tx.daily_outcomes(live.plan.workflow, started, now + timedelta(seconds=1))
            curves = resolution_curves(tx, live.plan.workflow, started, now, follow_up)
        series: dict[str, list[dict[str, Any]]] = {}
        for day, cohort, n, completed, resolved in rows:
            series.setdefault(cohort, []).append(
                {
                    "day": day,
                    "cases": n,
                    "completion": wilson(completed, n),
                    "resolution": wilson(resolved, n),
                }
            )
        stages = [
            {"at": d["at"].isoformat(), "action": d["action"], "stage": d["stage"]}
            for d in self.decisions(name)
            if d["action"] in ("start", "promote", "halt", "resume", "complete")
        ]
        return {
            "rollout": name,
            "series": series,
            "stages": stages,
            "curves": {
                cohort: {
                    "hours": list(curve.times),
                    "unresolved": list(curve.survival),
                    "median_hours": curve.median,
                }
                for cohort, curve in curves.items()
            },
        }

    def by_stage(self, name: str) -> list[dict[str, Any]]:
        """Each stage the rollout went through, over the cases opened while it ran: per cohort
        (arms or `enrolled`, and the control) cases, completion and resolution, with their
        95% Wilson intervals."""
        live = self.find(name)
        stages = [s.name for s in live.plan.stages]
        now = self.clock.now() + timedelta(microseconds=1)
        windows: list[tuple[str, datetime, datetime]] = []
        current: tuple[str, datetime] | None = None
        for d in self.decisions(name):
            if d["action"] == "start":
                current = (d["stage"], d["at"])
            elif d["action"] == "promote" and current is not None:
                windows.append((current[0], current[1], d["at"]))
                following = stages.index(d["stage"]) + 1
                current = (stages[following], d["at"]) if following < len(stages) else None
        if current is not None:
            windows.append((current[0], current[1], now))
        out = []
        with self.store.read() as tx:
            for stage, since, until in windows:
                tallies = tx.rollout_tallies(live.plan.workflow, since, until)
                tallies.pop(OUTSIDE, None)
                cohorts = {
                    cohort: {
                        "cases": t["cases"],
                        "completion": wilson(t.get("completed", 0), t["cases"]),
                        "resolution": wilson(t.get("resolved", 0), t["cases"]),
                    }
                    for cohort, t in sorted(tallies.items(), key=lambda kv: kv[0] == CONTROL)
                    if t.get("cases")
                }
                out.append(
                    {"stage": stage, "since": since, "until": min(until, now), "cohorts": cohorts}
                )
        return out

    def _spec(self, workflow: str) -> Spec | None:
        if workflow not in self._specs:
            with self.store.read() as tx:
                source = tx.workflow_source_by_name(workflow)
            self._specs[workflow] = load_spec(source, filename=workflow).spec if source else None
        return self._specs[workflow]

    def _variants(self, workflow: str) -> set[str]:
        spec = self._spec(workflow)
        return set(spec.variants) if spec else set()

    def _follow_up(self, workflow: str) -> timedelta:
        """How long a case left out is watched for a resolution elsewhere: its expiry."""
        spec = self._spec(workflow)
        if spec is None:
            return timedelta(days=30)
        return max(
            s.outreach.expires_after for s in (spec, *(spec.with_variant(v) for v in spec.variants))
        )

    def report(self, name: str) -> dict[str, Any]:
        """A rollout as people and programs read it: state, the (last) stage's gate table,
        its arms and the control, and every decision with the data it was based on."""
        live = self.find(name)
        control, _ = self._tallies(live)
        times = self.times(live)
        return {
            "rollout": name,
            "workflow": live.plan.workflow,
            "state": live.state,
            "stage": live.stage.name,
            "share": live.stage.share,
            "stage_started_at": live.stage_started_at.isoformat(),
            "stages_reached": live.stages_reached,
            **self._evidence(live, self.verdict(live), times),
            "control": {
                "cases": control.cases,
                "resolved": control.resolved,
                "time_to_resolution": times.get(CONTROL),
            },
            "decisions": [
                {
                    "at": d["at"].isoformat(),
                    "action": d["action"],
                    "stage": d["stage"],
                    "actor": d["actor"],
                    "reason": d["reason"],
                    "data": d["data"],
                }
                for d in self.decisions(name)
            ],
        }

    def _evidence(
        self, live: Live, verdict: Verdict, times: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """What a decision is based on: the gate table and the experiment's arms."""
        return {**_data(verdict), "arms": self.arms(live, times=times)}

    def paused(self, tx: Tx, workflows: set[str]) -> set[str]:
        """Of these workflows, those whose rollout is halted with `on_halt: pause_outreach`."""
        paused = set()
        for workflow in workflows:
            row = tx.live_rollout(workflow)
            if (
                row is not None
                and row["state"] == "halted"
                and self._live(row).plan.on_halt == "pause_outreach"
            ):
                paused.add(workflow)
        return paused

    # -- enrolment ----------------------------------------------------------------------
    @staticmethod
    def enrolment(live: Live, account_id: str, facts: dict[str, Any]) -> tuple[bool, str]:
        """Whether a new case of this account is enrolled, and its cohort (or arm)."""
        if live.segment is not None and not live.segment.evaluate({"account": facts}):
            return False, OUTSIDE
        if live.state == "halted" or not in_cohort(
            live.plan.workflow, account_id, live.stage.share
        ):
            return False, CONTROL
        experiment = live.stage.experiment
        if experiment is None:
            return True, ENROLLED
        group = f"{live.plan.rollout}:{experiment.name}"
        return True, arm(group, account_id, [(a.name, a.weight) for a in experiment.arms])

    # -- decisions ----------------------------------------------------------------------
    def start(self, source: str, *, filename: str, actor: str, reason: str) -> Live:
        plan = load_plan(source, filename=filename)
        now = self.clock.now()
        with self.store.transaction() as tx:
            if tx.rollout(plan.rollout) is not None:
                raise StateError(f"rollout {plan.rollout} was started before")
            other = tx.live_rollout(plan.workflow)
            if other is not None:
                raise StateError(
                    f"workflow {plan.workflow} is already being rolled out by {other['name']}"
                )
            if tx.workflow_source_by_name(plan.workflow) is None:
                raise InputError(f"{filename}: workflow {plan.workflow!r} is not loaded")
            tx.save_rollout(
                {
                    "name": plan.rollout,
                    "workflow": plan.workflow,
                    "version": plan.version,
                    "plan": source,
                    "stage": 0,
                    "state": "running",
                    "stage_started_at": now,
                    "updated_at": now,
                }
            )
            self._record(tx, plan.rollout, "start", plan.stages[0].name, actor, reason, {}, now)
        return self.get(plan.rollout)

    def promote(self, name: str, *, actor: str, reason: str) -> Live:
        """To the next stage (or completed after the last), only when the stage may be."""
        live = self.get(name)
        if live.state == "halted":
            raise StateError(f"rollout {name} is halted: resume it first")
        verdict = self.verdict(live)
        if not verdict.promotable:
            failing = [
                c.criterion + (" (no data yet)" if c.passed is None else "")
                for c in verdict.gates + verdict.minimums
                if not c.passed
            ]
            failing += [f"guardrail: {b}" for b in verdict.breaches]
            raise StateError(f"stage {live.stage.name} may not be promoted: {'; '.join(failing)}")
        now = self.clock.now()
        last = live.stage_index + 1 == len(live.plan.stages)
        evidence = self._evidence(live, verdict)
        with self.store.transaction() as tx:
            if last:
                tx.update_rollout(name, state="completed", updated_at=now)
            else:
                tx.update_rollout(
                    name, stage=live.stage_index + 1, stage_started_at=now, updated_at=now
                )
            self._record(tx, name, "promote", live.stage.name, actor, reason, evidence, now)
        return replace(live, state="completed") if last else self.get(name)

    def hold(self, name: str, *, actor: str, reason: str) -> Live:
        return self._move(name, "hold", "held", ("running",), actor, reason)

    def halt(self, name: str, *, actor: str, reason: str) -> Live:
        return self._move(name, "halt", "halted", ("running", "held"), actor, reason)

    def resume(self, name: str, *, actor: str, reason: str) -> Live:
        return self._move(name, "resume", "running", ("held", "halted"), actor, reason)

    def tick(self) -> list[str]:
        """The automatic decisions: halt on a broken guardrail; promote when allowed."""
        taken = []
        with self.store.read() as tx:
            rows = tx.live_rollouts()
        for row in rows:
            live = self._live(row)
            if live.state == "halted":
                continue
            verdict = self.verdict(live)
            if verdict.breaches:
                self.halt(live.name, actor="guardrail", reason="; ".join(verdict.breaches))
                taken.append(f"{live.name}: halted")
            elif (
                live.state == "running"
                and live.plan.promotion == "automatic"
                and verdict.promotable
            ):
                self.promote(live.name, actor="controller", reason="every gate passed")
                taken.append(f"{live.name}: promoted from {live.stage.name}")
        return taken

    def _move(
        self, name: str, action: str, to: str, allowed: tuple[str, ...], actor: str, reason: str
    ) -> Live:
        live = self.get(name)
        if live.state not in allowed:
            raise StateError(f"rollout {name} is {live.state}: it cannot be {to} now")
        if not reason.strip():
            raise InputError("say why (--reason): every decision is recorded with its reason")
        evidence = self._evidence(live, self.verdict(live))
        now = self.clock.now()
        with self.store.transaction() as tx:
            tx.update_rollout(name, state=to, updated_at=now)
            self._record(tx, name, action, live.stage.name, actor, reason, evidence, now)
        return self.get(name)

    @staticmethod
    def _record(
        tx: Tx,
        name: str,
        action: str,
        stage: str,
        actor: str,
        reason: str,
        data: dict[str, Any],
        now: datetime,
    ) -> None:
        tx.record_rollout_decision(
            {
                "rollout": name,
                "at": now,
                "action": action,
                "stage": stage,
                "actor": actor,
                "reason": reason,
                "data": data,
            }
        )


def _sum(tallies: Any) -> Tally:
    fields = Tally.__dataclass_fields__
    total = dict.fromkeys(fields, 0)
    for t in tallies:
        for f in fields:
            total[f] += getattr(t, f)
    return Tally(**total)


def wilson(successes: int, n: int) -> dict[str, float]:
    """A proportion with its 95% Wilson score interval."""
    ci = binomtest(successes, n).proportion_ci(method="wilson")
    return {"rate": successes / n, "low": float(ci.low), "high": float(ci.high)}


def resolution_curves(
    tx: Tx, workflow: str, since: datetime, now: datetime, follow_up: timedelta
) -> dict[str, Survival]:
    """Each cohort's Kaplan-Meier curve of time to resolution, in hours, from a table the
    database groups (one row per cohort, hundredth of an hour and outcome)."""
    grouped: dict[str, tuple[list[float], list[bool], list[int]]] = {}
    for cohort, hours, done, n in tx.resolution_times(workflow, since, now, follow_up):
        spans, flags, counts = grouped.setdefault(cohort, ([], [], []))
        spans.append(hours)
        flags.append(done)
        counts.append(n)
    return {c: kaplan_meier(h, f, counts=n) for c, (h, f, n) in grouped.items()}


def _data(verdict: Verdict) -> dict[str, Any]:
    """The gate table a decision was based on, as it is recorded."""
    return {
        "gates": [
            {
                "criterion": g.criterion,
                "value": g.value,
                "interval": list(g.interval) if g.interval else None,
                "passed": g.passed,
            }
            for g in verdict.gates + verdict.minimums
        ],
        "breaches": list(verdict.breaches),
        "promotable": verdict.promotable,
    }


def _versus(
    base_successes: int,
    base_n: int,
    successes: int,
    n: int,
    *,
    metric: str = "resolution",
    n_star: float,
) -> dict[str, Any] | None:
    """One rate against another on the sequential interval; None until both have data."""
    if not (base_n and n and base_successes):
        return None
    vs = compare(
        Proportion(successes=base_successes, n=base_n),
        Proportion(successes=successes, n=n),
        sequential=True,
        n_star=n_star,
    )
    return {
        "metric": metric,
        "difference": vs.difference,
        "interval": list(vs.difference_interval),
        "lift": vs.lift,
        "p_value": vs.p_value,
        "chance_to_win": vs.chance_to_win,
    }
