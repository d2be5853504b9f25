"""Policy over one case: is it eligible, which options may the customer see,
and does a submission need a stronger identity check.

Rules are compiled once per spec version (see `closeloop.spec.rules`); here
they are only evaluated. A rule that cannot be evaluated on real data fails
closed: the case is not contacted and the error is the recorded reason.
"""

from __future__ import annotations

from calendar import monthrange
from collections.abc import Callable, Iterator, Mapping
from copy import copy
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
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
    statement_version: str | None = None  # an attestation's
    # an arrangement's: the instalment counts whose instalments reach the floor, etc.
    instalments: tuple[int, ...] = ()
    frequencies: tuple[str, ...] = ()
    first_within: timedelta | None = None
    types: tuple[str, ...] = ()  # an upload's allowed file types
    max_bytes: int = 0


def _copier(value: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: dict(value)


class Facts(Mapping[str, Any]):
    """What rules see (case, account, ...), converted for CEL on first use.

    A rule reads only some variables (`CompiledRule.roots`); converting the
    others would cost more than evaluating the rule.
    """

    def __init__(
        self,
        compiled: CompiledSpec,
        data: Mapping[str, Any],
        account: Mapping[str, Any],
        **extra: Mapping[str, Any],
    ) -> None:
        self._sources: dict[str, Callable[[], Any]] = {
            "case": lambda: typed(compiled.spec, data),
            "account": lambda: dict(account),
        }
        self._sources.update({name: _copier(value) for name, value in extra.items()})
        self._converted: dict[str, Any] = {}

    def with_(self, **extra: Mapping[str, Any]) -> Facts:
        """These facts plus more variables (what was converted stays converted)."""
        more = copy(self)
        more._sources = {**self._sources, **{n: _copier(v) for n, v in extra.items()}}
        more._converted = {k: v for k, v in self._converted.items() if k not in extra}
        return more

    def __getitem__(self, name: str) -> Any:
        if name not in self._converted:
            self._converted[name] = to_cel(self._sources[name]())
        return self._converted[name]

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


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
    env = Facts(compiled, data, account)
    for rule in compiled.eligibility:
        try:
            holds = _run(rule, env)
        except PolicyEvaluationError as exc:
            return Eligibility(eligible=False, rule=rule.name, reason=str(exc))
        if holds is not True:
            return Eligibility(eligible=False, rule=rule.name, reason=rule.reason)
    return Eligibility(eligible=True)


def _amount(
    rule: CompiledRule | None, env: Mapping[str, Any], seen: dict[str, Decimal]
) -> Decimal | None:
    if rule is None:
        return None
    if rule.source not in seen:  # minimum and maximum are often the same expression
        value = _run(rule, env)
        seen[rule.source] = Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP)
    return seen[rule.source]


def options(
    compiled: CompiledSpec,
    data: Mapping[str, Any],
    account: Mapping[str, Any],
    *,
    facts: Facts | None = None,
) -> list[OfferedOption]:
    """The options this case may be offered, in spec order, with computed bounds."""
    env = facts if facts is not None else Facts(compiled, data, account)
    amounts: dict[str, Decimal] = {}
    offered = []
    for kind, option in compiled.spec.miniapp.options.items():
        low_rule, high_rule = compiled.bounds.get(kind, (None, None))
        low, high = _amount(low_rule, env, amounts), _amount(high_rule, env, amounts)
        if low is not None and high is not None and low > high:
            continue  # nothing valid to offer
        counts: tuple[int, ...] = ()
        if option.instalments and high is not None:
            floor = compiled.floors.get(kind)
            least = _amount(floor, env, amounts) if floor is not None else _CENT
            counts = tuple(n for n in sorted(set(option.instalments)) if high / n >= (least or 0))
            if not counts:
                continue  # no plan within policy for this balance
        offered.append(
            OfferedOption(
                kind=kind,
                outcome=option.outcome,
                label=option.label,
                minimum=low,
                maximum=high,
                statement_version=option.statement_version,
                instalments=counts,
                frequencies=tuple(option.frequencies or ()),
                first_within=option.first_within,
                types=tuple(option.types or ()),
                max_bytes=(option.max_mb or 10) * 1024 * 1024 if option.types else 0,
            )
        )
    return offered


@dataclass(frozen=True)
class Instalment:
    due: date
    amount: Decimal


@dataclass(frozen=True)
class Plan:
    count: int
    frequency: str
    first: date
    instalments: list[Instalment]

    def submission(self, total: Decimal) -> dict[str, Any]:
        """The plan as an outcome's values: what the system of record is sent."""
        return {
            "amount": str(total),
            "instalments": self.count,
            "frequency": self.frequency,
            "first_date": self.first.isoformat(),
            "schedule": [
                {"due": i.due.isoformat(), "amount": str(i.amount)} for i in self.instalments
            ],
        }


def paid_with(account: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, str] | str:
    """How a payment is made: a method on file (by id) or a new card (by the
    provider's token); or why the choice is not one this account can make."""
    method = str(values.get("method") or "").strip()
    token = str(values.get("token_ref") or "").strip()
    if method and token:
        return "choose a payment method on file or a new card, not both"
    if token:
        return {"token_ref": token}
    if not method:
        return "choose a payment method on file or a new card"
    on_file = {str(m.get("id")) for m in account.get("payment_methods") or ()}
    if method not in on_file:
        return "that payment method is not on file for this account"
    return {"method": method}


def last_first_date(option: OfferedOption, now: datetime) -> date:
    """The latest day an arrangement's first payment may fall on."""
    return (now + (option.first_within or timedelta(0))).date()


def chosen_plan(option: OfferedOption, values: Mapping[str, Any], now: datetime) -> Plan | str:
    """The plan `values` choose, with its schedule, or why it is not one `option` offers."""
    try:
        count = int(values.get("instalments", ""))
        first = date.fromisoformat(str(values.get("first_date", "")))
    except (TypeError, ValueError):
        return "choose how many instalments and the date of the first one"
    frequency = str(values.get("frequency", ""))
    if count not in option.instalments:
        return f"{count} instalments are not offered for this balance"
    if frequency not in option.frequencies:
        return f"payments {frequency} are not offered"
    last = last_first_date(option, now)
    if not now.date() <= first <= last:
        return f"the first payment must be between {now.date()} and {last}"
    if option.maximum is None:  # the spec requires max for an arrangement
        return "this plan has no total"
    return Plan(count, frequency, first, schedule(option.maximum, count, frequency, first))


def schedule(total: Decimal, count: int, frequency: str, first: date) -> list[Instalment]:
    """The instalments of a plan: equal to the cent, the remainder on the last one.

    Monthly instalments keep the first one's day of the month (the month's
    last day when it is shorter).
    """
    if count < 1:
        raise ValueError("a plan has at least one instalment")
    each = (total / count).quantize(_CENT, rounding=ROUND_DOWN)
    amounts = [each] * (count - 1) + [total - each * (count - 1)]
    step = {"weekly": 7, "fortnightly": 14}.get(frequency)
    dates = []
    for index in range(count):
        if step is not None:
            dates.append(first + timedelta(days=step * index))
            continue
        if frequency != "monthly":
            raise ValueError(f"unknown frequency {frequency!r}")
        month = first.month - 1 + index
        year, month = first.year + month // 12, month % 12 + 1
        dates.append(date(year, month, min(first.day, monthrange(year, month)[1])))
    return [Instalment(due=d, amount=a) for d, a in zip(dates, amounts, strict=True)]


def step_up_required(
    compiled: CompiledSpec,
    data: Mapping[str, Any],
    account: Mapping[str, Any],
    submission: Mapping[str, Any],
    *,
    facts: Facts | None = None,
) -> bool:
    """True when a step-up rule asks for a one-time code for this submission."""
    if not compiled.step_up:
        return False
    sub = {
        "amount": Decimal(str(submission.get("amount", "0"))),
        "option": str(submission.get("option", "")),
    }
    env = (facts if facts is not None else Facts(compiled, data, account)).with_(submission=sub)
    return any(_run(rule, env) is True for rule in compiled.step_up)
