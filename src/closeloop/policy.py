"""Policy over one case: is it eligible, which options may the customer see,
and does a submission need a stronger identity check.

Rules are compiled once per spec version (see `closeloop.spec.rules`); here
they are only evaluated. A rule that cannot be evaluated on real data fails
closed: the case is not contacted and the error is the recorded reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from closeloop.spec.loader import CompiledSpec
from closeloop.spec.rules import CompiledRule, to_cel
from closeloop.spec.trigger import typed

_CENT = Decimal("0.01")


@dataclass(frozen=True, kw_only=True)
class Eligibility:
    eligible: bool
    rule: str | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class OfferedOption:
    """An option the mini-app may show this customer, with its bounds."""

    kind: str
    outcome: str
    label: str
    minimum: Decimal | None = None
    maximum: Decimal | None = None


def activation(
    compiled: CompiledSpec,
    data: Mapping[str, Any],
    account: Mapping[str, Any],
    **extra: Mapping[str, Any],
) -> dict[str, Any]:
    base = {"case": to_cel(typed(compiled.spec, data)), "account": to_cel(dict(account))}
    base.update({name: to_cel(dict(value)) for name, value in extra.items()})
    return base


def _run(rule: CompiledRule, env: Mapping[str, Any]) -> Any:
    try:
        return rule.evaluate(env)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise PolicyEvaluationError(f"rule {rule.name} could not be evaluated: {exc}") from exc


class PolicyEvaluationError(Exception):
    """A rule failed on real case data."""


def eligibility(
    compiled: CompiledSpec, data: Mapping[str, Any], account: Mapping[str, Any]
) -> Eligibility:
    """The first failing rule decides; every rule must hold for a case to be eligible."""
    env = activation(compiled, data, account)
    for rule in compiled.eligibility:
        try:
            holds = _run(rule, env)
        except PolicyEvaluationError as exc:
            return Eligibility(eligible=False, rule=rule.name, reason=str(exc))
        if holds is not True:
            return Eligibility(eligible=False, rule=rule.name, reason=rule.reason)
    return Eligibility(eligible=True)


def _amount(rule: CompiledRule | None, env: Mapping[str, Any]) -> Decimal | None:
    if rule is None:
        return None
    value = _run(rule, env)
    return Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP)


def options(
    compiled: CompiledSpec, data: Mapping[str, Any], account: Mapping[str, Any]
) -> list[OfferedOption]:
    """The options this case may be offered, in spec order, with computed bounds."""
    env = activation(compiled, data, account)
    offered = []
    for kind, option in compiled.spec.miniapp.options.items():
        low_rule, high_rule = compiled.bounds.get(kind, (None, None))
        low, high = _amount(low_rule, env), _amount(high_rule, env)
        if low is not None and high is not None and low > high:
            continue  # nothing valid to offer
        offered.append(
            OfferedOption(
                kind=kind, outcome=option.outcome, label=option.label, minimum=low, maximum=high
            )
        )
    return offered


def step_up_required(
    compiled: CompiledSpec,
    data: Mapping[str, Any],
    account: Mapping[str, Any],
    submission: Mapping[str, Any],
) -> bool:
    """True when a step-up rule asks for a one-time code for this submission."""
    sub = {
        "amount": Decimal(str(submission.get("amount", "0"))),
        "option": str(submission.get("option", "")),
    }
    env = activation(compiled, data, account, submission=sub)
    return any(_run(rule, env) is True for rule in compiled.step_up)
