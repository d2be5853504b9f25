"""The statistics a phased rollout decides on: comparisons, power, sample ratio, survival.

Pure functions over counts (no I/O), so gates, the CLI and the report use
the same numbers.

- `compare`: a treatment's proportion against the control's, as GrowthBook's
  stats engine (gbstats) reports it: the relative lift (treatment / control
  - 1) with its delta-method standard error, a two-sided interval and
  p-value, either fixed-horizon (Welch's t) or **sequential**: an
  asymptotic confidence sequence (Waudby-Smith et al., 2023, "Time-uniform
  central limit theory and asymptotic confidence sequences",
  arXiv:2103.06476), valid however often it is looked at, tuned by `n_star`
  (the total sample size where it is narrowest; gbstats' default 5,000).
  Also the absolute difference and a Bayesian chance to win.
- `power` and `sample_size`: two proportions, two-sided, as R's
  `power.prop.test` computes them.
- `srm`: sample-ratio mismatch, a chi-square test of the counts against the
  configured weights, flagged at p < 0.001.
- `kaplan_meier`: time to resolution with open cases censored, never dropped.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import integrate, optimize, stats

SRM_THRESHOLD = 0.001
DEFAULT_N_STAR = 5000.0


class StatsError(ValueError):
    """Counts or settings a computation cannot take."""


@dataclass(frozen=True, kw_only=True)
class Proportion:
    successes: int
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise StatsError(f"n must be at least 1, not {self.n}")
        if not 0 <= self.successes <= self.n:
            raise StatsError(f"successes must be between 0 and n ({self.n}), not {self.successes}")

    @property
    def rate(self) -> float:
        return self.successes / self.n

    @property
    def variance(self) -> float:
        """Of one unit's outcome (p(1 - p), as gbstats takes it)."""
        return self.rate * (1 - self.rate)


@dataclass(frozen=True, kw_only=True)
class Comparison:
    control: Proportion
    treatment: Proportion
    method: Literal["fixed", "sequential"]
    alpha: float
    lift: float  # treatment rate / control rate - 1
    lift_stddev: float
    lift_interval: tuple[float, float]
    p_value: float
    difference: float  # treatment rate - control rate (absolute)
    difference_interval: tuple[float, float]
    chance_to_win: float  # P(treatment rate > control rate), uniform Beta priors
    n_star: float | None = None

    @property
    def significant(self) -> bool:
        low, high = self.lift_interval
        return low > 0 or high < 0


def sequential_rho(alpha: float, n_star: float) -> float:
    """The mixture's tuning, chosen so the sequence is narrowest at `n_star` (two-sided)."""
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_star)


def sequential_halfwidth(s2: float, n: float, alpha: float, rho: float) -> float:
    """Half the width of the asymptotic confidence sequence at total sample size `n`;
    `s2` is `n` times the estimate's variance."""
    nr2 = n * rho * rho
    return math.sqrt(s2) * math.sqrt(
        2 * (nr2 + 1) / (n * rho) ** 2 * math.log(math.sqrt(nr2 + 1) / alpha)
    )


def compare(
    control: Proportion,
    treatment: Proportion,
    *,
    alpha: float = 0.05,
    sequential: bool = False,
    n_star: float = DEFAULT_N_STAR,
) -> Comparison:
    """The treatment against the control (see the module's docstring)."""
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must be between 0 and 1, not {alpha}")
    if n_star <= 0:
        raise StatsError(f"n_star must be positive, not {n_star}")
    a, b = control, treatment
    if a.rate == 0:
        raise StatsError("the control has no successes: a relative lift is not defined")
    lift = b.rate / a.rate - 1
    lift_var = b.variance / (a.rate**2 * b.n) + a.variance * b.rate**2 / (a.rate**4 * a.n)
    diff = b.rate - a.rate
    diff_var = a.variance / a.n + b.variance / b.n
    n = a.n + b.n
    if lift_var == 0:  # every unit of both arms alike: nothing to tell them apart by
        degenerate = (lift, lift)
        return Comparison(
            control=a, treatment=b, method="sequential" if sequential else "fixed",
            alpha=alpha, lift=lift, lift_stddev=0.0, lift_interval=degenerate,
            p_value=1.0, difference=diff, difference_interval=(diff, diff),
            chance_to_win=_chance_to_win(a, b), n_star=n_star if sequential else None,
        )  # fmt: skip
    if sequential:
        rho = sequential_rho(alpha, n_star)
        half = sequential_halfwidth(lift_var * n, n, alpha, rho)
        half_diff = sequential_halfwidth(diff_var * n, n, alpha, rho)
        # The always-valid p-value: one over the mixture's e-value (Waudby-Smith et al.).
        nr2 = n * rho * rho
        t2 = lift**2 / lift_var
        log_e = rho * rho * t2 * n / (2 * (nr2 + 1)) - math.log(nr2 + 1) / 2
        p_value = min(1.0, math.exp(-log_e))  # in logs: the e-value overflows a float
    else:
        dof = _welch_dof(a, b)
        quantile = float(stats.t.ppf(1 - alpha / 2, dof))
        half = quantile * math.sqrt(lift_var)
        half_diff = quantile * math.sqrt(diff_var)
        p_value = float(2 * stats.t.sf(abs(lift) / math.sqrt(lift_var), dof))
    return Comparison(
        control=a,
        treatment=b,
        method="sequential" if sequential else "fixed",
        alpha=alpha,
        lift=lift,
        lift_stddev=math.sqrt(lift_var),
        lift_interval=(lift - half, lift + half),
        p_value=p_value,
        difference=diff,
        difference_interval=(diff - half_diff, diff + half_diff),
        chance_to_win=_chance_to_win(a, b),
        n_star=n_star if sequential else None,
    )


def _welch_dof(a: Proportion, b: Proportion) -> float:
    """Welch-Satterthwaite degrees of freedom, as gbstats computes them."""
    va, vb = a.variance / a.n, b.variance / b.n
    denominator = vb**2 / (b.n - 1) if b.n > 1 else 0.0
    denominator += va**2 / (a.n - 1) if a.n > 1 else 0.0
    return (va + vb) ** 2 / denominator if denominator else float("inf")


def _chance_to_win(a: Proportion, b: Proportion) -> float:
    """P(treatment rate > control rate) under Beta(1 + s, 1 + n - s) posteriors."""
    pa = stats.beta(1 + a.successes, 1 + a.n - a.successes)
    pb = stats.beta(1 + b.successes, 1 + b.n - b.successes)
    low = min(pa.ppf(1e-9), pb.ppf(1e-9))
    high = max(pa.ppf(1 - 1e-9), pb.ppf(1 - 1e-9))
    value = integrate.quad(lambda x: float(pb.pdf(x) * pa.cdf(x)), low, high, limit=200)[0]
    return min(1.0, max(0.0, float(value)))


# -- planning -------------------------------------------------------------------------
def _check(p1: float, p2: float, alpha: float) -> None:
    for name, p in (("p1", p1), ("p2", p2)):
        if not 0 < p < 1:
            raise StatsError(f"{name} must be between 0 and 1, not {p}")
    if p1 == p2:
        raise StatsError("p1 and p2 are equal: there is no difference to detect")
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must be between 0 and 1, not {alpha}")


def power(p1: float, p2: float, n: float, *, alpha: float = 0.05) -> float:
    """The power of a two-sided test of two proportions with `n` units per arm
    (R's `power.prop.test`, strict = FALSE)."""
    _check(p1, p2, alpha)
    if n <= 1:
        raise StatsError(f"n must be more than 1, not {n}")
    z = float(stats.norm.ppf(1 - alpha / 2))
    pooled = (p1 + p2) / 2
    numerator = math.sqrt(n) * abs(p1 - p2) - z * math.sqrt(2 * pooled * (1 - pooled))
    return float(stats.norm.cdf(numerator / math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))))


def sample_size(p1: float, p2: float, *, target: float = 0.8, alpha: float = 0.05) -> float:
    """Units per arm for `target` power (R's `power.prop.test` with `power` given)."""
    _check(p1, p2, alpha)
    if not alpha < target < 1:
        raise StatsError(f"power must be between alpha and 1, not {target}")
    return float(optimize.brentq(lambda n: power(p1, p2, n, alpha=alpha) - target, 2, 1e9))


# -- sample ratio -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SampleRatio:
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    mismatch: bool  # p < SRM_THRESHOLD


def srm(counts: Sequence[int], weights: Sequence[float] | None = None) -> SampleRatio:
    """Chi-square test of the arms' counts against their configured weights."""
    if len(counts) < 2:
        raise StatsError("give the counts of at least two arms")
    if any(c < 0 for c in counts):
        raise StatsError("counts cannot be negative")
    weights = list(weights) if weights is not None else [1.0] * len(counts)
    if len(weights) != len(counts):
        raise StatsError(f"{len(counts)} counts but {len(weights)} weights")
    if any(w <= 0 for w in weights):
        raise StatsError("weights must be positive")
    total = sum(counts)
    if total == 0:
        raise StatsError("every count is zero")
    expected = [total * w / sum(weights) for w in weights]
    chi2, p_value = stats.chisquare(list(counts), expected)
    return SampleRatio(
        counts=tuple(counts),
        expected=tuple(expected),
        chi2=float(chi2),
        p_value=float(p_value),
        mismatch=bool(p_value < SRM_THRESHOLD),
    )


# -- time to resolution ---------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Survival:
    times: tuple[float, ...]  # where the curve steps down
    survival: tuple[float, ...]  # share still unresolved just after each time
    at_risk: tuple[int, ...]
    events: tuple[int, ...]
    median: float | None  # the first time the curve is at or below one half

    def at(self, t: float) -> float:
        """The share still unresolved at time `t`."""
        index = bisect_right(self.times, t)
        return self.survival[index - 1] if index else 1.0


def kaplan_meier(
    durations: Sequence[float], resolved: Sequence[bool], counts: Sequence[int] | None = None
) -> Survival:
    """The Kaplan-Meier estimate of staying unresolved; open cases are censored at their age.

    `counts`, when given, says how many cases share each (duration, resolved) pair: the
    same estimate from a table grouped in the database.
    """
    weights = [1] * len(durations) if counts is None else list(counts)
    if not len(durations) == len(resolved) == len(weights):
        raise StatsError("one resolved flag (and one count) per duration")
    if any(d < 0 for d in durations):
        raise StatsError("durations cannot be negative")
    if any(w < 1 for w in weights):
        raise StatsError("counts must be at least 1")
    pairs = sorted(zip(durations, resolved, weights, strict=True))
    at_risk = sum(weights)
    level = 1.0
    times: list[float] = []
    levels: list[float] = []
    risks: list[int] = []
    resolved_at: list[int] = []
    i = 0
    while i < len(pairs):
        t, j, events, leaving = pairs[i][0], i, 0, 0
        while j < len(pairs) and pairs[j][0] == t:
            leaving += pairs[j][2]
            events += pairs[j][2] if pairs[j][1] else 0
            j += 1
        if events:
            level *= 1 - events / at_risk
            times.append(t)
            levels.append(level)
            risks.append(at_risk)
            resolved_at.append(events)
        at_risk -= leaving
        i = j
    median = next((t for t, s in zip(times, levels, strict=True) if s <= 0.5), None)
    return Survival(
        times=tuple(times),
        survival=tuple(levels),
        at_risk=tuple(risks),
        events=tuple(resolved_at),
        median=median,
    )
