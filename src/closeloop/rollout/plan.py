"""The rollout plan: a versioned YAML file per workflow, validated like the spec.

Stages grow the share of eligible cases enrolled (5% -> 25% -> 100%), each
with an optional segment (CEL over the account), a minimum duration and
sample, an optional experiment (arms with weights, a hypothesis, the sample
each arm needs for the stated power), and gates: absolute floors and
ceilings, and criteria relative to the control ("not enrolled": business as
usual). Guardrails halt the rollout at once. See docs/rollout.md.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from closeloop.errors import SpecError
from closeloop.spec.loader import parse_yaml_model, read_source
from closeloop.spec.model import RESERVED_COHORTS, Duration
from closeloop.spec.rules import ACCOUNT_FIELDS, RuleProblem, compile_rule
from closeloop.stats import StatsError, sample_size

# What a gate or guardrail can read, per arm or stage (docs/rollout.md#metrics).
RATES = ("completion", "resolution", "writeback_success", "exception_rate", "opt_out_rate",
         "identity_failure_rate")  # fmt: skip
COUNTS = ("duplicate_writebacks",)
Metric = Literal[
    "completion",
    "resolution",
    "writeback_success",
    "exception_rate",
    "opt_out_rate",
    "identity_failure_rate",
    "duplicate_writebacks",
    "sample_ratio_mismatch",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Arm(_Strict):
    """A share of the stage's cases; when the spec has a variant of this name, its treatment."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    weight: int = Field(ge=1, le=10_000)

    @model_validator(mode="after")
    def _not_a_cohort(self) -> Arm:
        if self.name in RESERVED_COHORTS:
            raise ValueError(f"{self.name!r} names a cohort, not an arm: choose another name")
        return self


class Hypothesis(_Strict):
    metric: Literal["completion"] = "completion"
    direction: Literal["increase", "decrease"] = "increase"
    baseline: float = Field(gt=0, lt=1)  # the rate expected without the change
    minimum_detectable_effect: float = Field(gt=0, lt=1)  # in points: 0.03 = 3 points


class Experiment(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    arms: list[Arm] = Field(min_length=2)
    hypothesis: Hypothesis
    power: float = Field(default=0.8, gt=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _arms(self) -> Experiment:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: each arm needs its own name ({', '.join(names)})")
        return self

    def sample_per_arm(self) -> int:
        """Units each arm needs to detect the effect with the stated power (two-sided)."""
        h = self.hypothesis
        sign = 1 if h.direction == "increase" else -1
        target = h.baseline + sign * h.minimum_detectable_effect
        if not 0 < target < 1:
            raise StatsError(
                f"baseline {h.baseline} and effect {h.minimum_detectable_effect} leave 0..1"
            )
        return -int(-sample_size(h.baseline, target, target=self.power, alpha=self.alpha) // 1)


class Gate(_Strict):
    """An exit criterion: an absolute bound, or a comparison with the control."""

    metric: Metric
    at_least: float | None = Field(default=None, ge=0, le=1)
    at_most: float | None = Field(default=None, ge=0, le=1)
    # Relative: the enrolled rate may be worse than the control's by at most this many
    # points (the lower end of the sequential interval of the difference must clear it).
    not_worse_than_control_by: float | None = Field(default=None, ge=0, lt=1)
    window: Duration = timedelta(days=7)

    @model_validator(mode="after")
    def _one(self) -> Gate:
        given = [x for x in (self.at_least, self.at_most, self.not_worse_than_control_by)]
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of at_least, at_most, not_worse_than_control_by")
        if self.metric not in RATES:
            raise ValueError(f"metric: a gate reads a rate ({', '.join(RATES)})")
        if self.not_worse_than_control_by is not None and self.metric != "resolution":
            raise ValueError(
                "against the control only resolution compares: cases not enrolled are not "
                "contacted, so they have no completion in the message, writebacks or opt-outs"
            )
        return self


class Guardrail(_Strict):
    """A condition that halts the rollout at once."""

    metric: Metric
    above: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bound(self) -> Guardrail:
        if self.metric == "sample_ratio_mismatch":
            if self.above is not None:
                raise ValueError("sample_ratio_mismatch takes no bound: p < 0.001 halts")
        elif self.above is None:
            raise ValueError(f"{self.metric}: give above (the value that halts)")
        return self


class Stage(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    share: float = Field(gt=0, le=100)  # percent of eligible cases enrolled
    segment: str | None = None  # CEL over the account: only these cases take part
    min_duration: Duration = timedelta(days=7)
    min_sample: int = Field(default=0, ge=0)
    experiment: Experiment | None = None
    gates: list[Gate] = Field(default_factory=list)


class RolloutPlan(_Strict):
    rollout: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    workflow: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    promotion: Literal["automatic", "approval"] = "approval"
    # On a halt: stop new enrolments, and pause or let finish the outreach of cases
    # already enrolled (writebacks of outcomes already given always finish).
    on_halt: Literal["pause_outreach", "let_finish"] = "pause_outreach"
    stages: list[Stage] = Field(min_length=1)
    guardrails: list[Guardrail] = Field(default_factory=list)
    # gbstats' sequential tuning parameter: the sample at which the confidence sequence is
    # narrowest; set it near the cases a stage is expected to judge (docs/rollout.md).
    sequential_tuning: float = Field(default=5000, gt=0, le=10_000_000)


def load_plan(text: str, *, filename: str = "<rollout>") -> RolloutPlan:
    """Validate a rollout plan; raise SpecError with every problem at its line."""
    plan, problem = parse_yaml_model(
        text,
        RolloutPlan,
        filename=filename,
        expected="expected a mapping with rollout, version, workflow and stages",
        what="the rollout plan",
    )
    problems = []
    seen: set[str] = set()
    for i, stage in enumerate(plan.stages):
        if stage.name in seen:
            problems.append(problem(("stages", i, "name"), "each stage needs its own name"))
        seen.add(stage.name)
        before = plan.stages[i - 1] if i else None
        if before is not None and stage.share <= before.share:
            problems.append(
                problem(
                    ("stages", i, "share"),
                    f"each share must be larger than the last ({before.share:g}%)",
                )
            )
        if stage.segment is not None:
            try:
                compile_rule(f"{stage.name}.segment", stage.segment,
                             variables={"account": ACCOUNT_FIELDS})  # fmt: skip
            except RuleProblem as exc:
                problems.append(problem(("stages", i, "segment"), str(exc)))
        if stage.experiment is not None:
            try:
                stage.experiment.sample_per_arm()
            except StatsError as exc:
                problems.append(problem(("stages", i, "experiment", "hypothesis"), str(exc)))
    if plan.stages[0].share > 5:
        problems.append(
            problem(("stages", 0, "share"), "the first stage enrols at most 5% of eligible cases")
        )
    if problems:
        raise SpecError(problems, what="the rollout plan")
    return plan


def load_plan_file(path: str | Path) -> RolloutPlan:
    return load_plan(read_source(path, what="the rollout plan"), filename=str(path))


def describe(plan: RolloutPlan) -> list[dict[str, Any]]:
    """Each stage as a reviewer reads it: share, segment, minimums, arms and sample, gates."""
    rows = []
    for stage in plan.stages:
        row: dict[str, Any] = {
            "stage": stage.name,
            "share": stage.share,
            "segment": stage.segment,
            "min_days": stage.min_duration / timedelta(days=1),
            "min_sample": stage.min_sample,
            "gates": [
                {
                    **g.model_dump(exclude_none=True, exclude={"window"}),
                    "window_days": g.window / timedelta(days=1),
                }
                for g in stage.gates
            ],
        }
        if stage.experiment is not None:
            e = stage.experiment
            row["experiment"] = {
                "name": e.name,
                "arms": {a.name: a.weight for a in e.arms},
                "hypothesis": e.hypothesis.model_dump(mode="json"),
                "power": e.power,
                "alpha": e.alpha,
                "sample_per_arm": e.sample_per_arm(),
            }
        rows.append(row)
    return rows
