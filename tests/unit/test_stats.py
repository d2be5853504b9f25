"""closeloop.stats against published reference values, and an A/A peeking simulation.

Sources, named where their numbers are used:
- GrowthBook's stats engine, gbstats: packages/stats/tests/frequentist/test_tests.py
  (TestTwoSidedTTest binomial case; TestSequentialTTest.test_sequential_test_runs_prop).
- R, stats::power.prop.test, the examples of its manual page.
- Kleinbaum & Klein, Survival Analysis: A Self-Learning Text, the Freireich et al.
  (1963) remission times of the 6-MP group, Kaplan-Meier table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from closeloop.stats import (
    Proportion,
    StatsError,
    compare,
    kaplan_meier,
    power,
    sample_size,
    sequential_halfwidth,
    sequential_rho,
    srm,
)


def test_fixed_horizon_matches_gbstats() -> None:
    # gbstats test_tests.py: ProportionStatistic(sum=14, n=28) vs (sum=16, n=30)
    result = compare(Proportion(successes=14, n=28), Proportion(successes=16, n=30))
    assert round(result.lift, 5) == 0.06667
    assert round(result.lift_stddev, 5) == 0.2717
    assert tuple(round(x, 5) for x in result.lift_interval) == (-0.47767, 0.61101)
    assert round(result.p_value, 5) == 0.80707
    assert not result.significant


def test_sequential_matches_gbstats() -> None:
    # gbstats test_tests.py, test_sequential_test_runs_prop (tuning parameter 5,000)
    result = compare(
        Proportion(successes=1396, n=3000), Proportion(successes=2422, n=3461), sequential=True
    )
    assert round(result.lift, 5) == 0.50386
    assert round(result.lift_stddev, 5) == 0.03386
    assert tuple(round(x, 5) for x in result.lift_interval) == (0.40098, 0.60675)
    assert result.significant and result.p_value < 1e-6 and result.chance_to_win > 0.999


def test_an_overwhelming_difference_has_a_p_value_of_zero_not_an_overflow() -> None:
    huge = compare(
        Proportion(successes=10_000, n=1_000_000),
        Proportion(successes=900_000, n=1_000_000),
        sequential=True,
    )
    assert huge.p_value == 0.0 and huge.significant


def test_the_sequence_is_narrowest_near_its_tuning() -> None:
    control, treatment = Proportion(successes=300, n=3000), Proportion(successes=330, n=3000)
    widths = {
        n_star: (lambda r: r.lift_interval[1] - r.lift_interval[0])(
            compare(control, treatment, sequential=True, n_star=n_star)
        )
        for n_star in (10, 6000, 1_000_000)
    }
    assert widths[6000] < widths[10] and widths[6000] < widths[1_000_000]
    fixed = compare(control, treatment)
    assert fixed.lift_interval[1] - fixed.lift_interval[0] < widths[6000]


def test_power_matches_r_power_prop_test() -> None:
    # ?power.prop.test: power.prop.test(n = 50, p1 = .50, p2 = .75) -> power = 0.7401659
    assert round(power(0.50, 0.75, 50), 7) == 0.7401659
    # power.prop.test(p1 = .50, p2 = .75, power = .90) -> n = 76.7 (as the manual prints it;
    # R's uniroot stops within its tolerance, closeloop solves to machine precision)
    needed = sample_size(0.50, 0.75, target=0.90)
    assert round(needed, 1) == 76.7 and round(power(0.50, 0.75, needed), 9) == 0.9


def test_sample_ratio_mismatch() -> None:
    close = srm([5000, 5200])
    assert round(close.chi2, 5) == 3.92157 and not close.mismatch  # 2 * 100^2 / 5100
    off = srm([5000, 5600])
    assert off.p_value < 1e-6 and off.mismatch
    weighted = srm([2000, 8000], weights=[20, 80])
    assert weighted.chi2 == 0 and weighted.p_value == 1.0
    with pytest.raises(StatsError, match="2 counts but 3 weights"):
        srm([1, 2], weights=[1, 1, 1])


def test_kaplan_meier_matches_the_textbook() -> None:
    # 6-MP group of Freireich et al. (1963), weeks in remission; False = censored.
    weeks = [6, 6, 6, 6, 7, 9, 10, 10, 11, 13, 16, 17, 19, 20, 22, 23, 25, 32, 32, 34, 35]
    relapsed = [True, True, True, False, True, False, True, False, False, True, True, False,
                False, False, True, True, False, False, False, False, False]  # fmt: skip
    curve = kaplan_meier(weeks, relapsed)
    assert curve.times == (6, 7, 10, 13, 16, 22, 23)
    assert [round(s, 4) for s in curve.survival] == [
        0.8571, 0.8067, 0.7529, 0.6902, 0.6275, 0.5378, 0.4482
    ]  # fmt: skip
    assert curve.at_risk == (21, 17, 15, 12, 11, 7, 6) and curve.median == 23
    assert curve.at(5) == 1.0 and curve.at(6) == curve.at(6.5) == curve.survival[0]
    assert curve.at(100) == curve.survival[-1]


def test_kaplan_meier_from_a_grouped_table_is_the_same_curve() -> None:
    weeks = [6, 6, 6, 6, 7, 9, 10, 10, 11, 13, 16, 17, 19, 20, 22, 23, 25, 32, 32, 34, 35]
    relapsed = [True, True, True, False, True, False, True, False, False, True, True, False,
                False, False, True, True, False, False, False, False, False]  # fmt: skip
    table: dict[tuple[int, bool], int] = {}
    for week, event in zip(weeks, relapsed, strict=True):
        table[week, event] = table.get((week, event), 0) + 1
    grouped = kaplan_meier([w for w, _ in table], [e for _, e in table], list(table.values()))
    assert grouped == kaplan_meier(weeks, relapsed)
    with pytest.raises(StatsError, match="counts must be at least 1"):
        kaplan_meier([1.0], [True], [0])


def test_kaplan_meier_is_linear_in_ties() -> None:
    # A million cases on a few hundred distinct hours: one pass, not one per tie.
    hours = [float(i % 240) for i in range(1_000_000)]
    curve = kaplan_meier(hours, [i % 7 != 0 for i in range(1_000_000)])
    assert len(curve.times) == 240 and curve.at_risk[0] == 1_000_000


def test_bad_counts_say_what_is_wrong() -> None:
    with pytest.raises(StatsError, match="successes must be between 0 and n"):
        Proportion(successes=11, n=10)
    with pytest.raises(StatsError, match="the control has no successes"):
        compare(Proportion(successes=0, n=10), Proportion(successes=1, n=10))
    with pytest.raises(StatsError, match="p1 and p2 are equal"):
        power(0.3, 0.3, 100)


def test_looking_every_day_at_an_a_a_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    """400 seeded A/A runs, looked at daily for 60 days: how often a 'winner' is declared.

    The confidence sequence keeps it at most 5%; the naive daily z-test does not.
    """
    runs, days, per_day, rate, alpha = 400, 60, 100, 0.3, 0.05
    rng = np.random.default_rng(20261205)
    control = rng.binomial(per_day, rate, size=(runs, days)).cumsum(axis=1)
    treatment = rng.binomial(per_day, rate, size=(runs, days)).cumsum(axis=1)
    n = per_day * np.arange(1, days + 1)
    pa, pb = control / n, treatment / n
    lift = pb / pa - 1
    variance = pb * (1 - pb) / (pa**2 * n) + pa * (1 - pa) * pb**2 / (pa**4 * n)
    total = 2 * n
    rho = sequential_rho(alpha, n_star=float(total[-1]))
    half = np.vectorize(sequential_halfwidth)(variance * total, total, alpha, rho)
    sequential = (np.abs(lift) > half).any(axis=1).mean()
    z = 1.959963984540054
    naive = (np.abs(lift) > z * np.sqrt(variance)).any(axis=1).mean()
    with capsys.disabled():
        print(
            f"\nA/A, {runs} runs looked at daily for {days} days: a false winner in "
            f"{sequential:.1%} with the confidence sequence, {naive:.1%} with the naive z-test"
        )
    assert sequential <= 0.05
    assert naive > 3 * max(sequential, 0.05)
    assert math.isclose(rho, sequential_rho(alpha, 12_000))
