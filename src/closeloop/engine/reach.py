"""A case's contact policy: the workflow's rules for this recipient, and their zones."""

from __future__ import annotations

from datetime import timedelta

from closeloop.contact import Cap, ContactRules, ContactWindow, zones_for
from closeloop.contact.policy import PHONE_CHANNELS
from closeloop.engine.case import Case
from closeloop.spec.loader import CompiledSpec


def region_of(case: Case) -> str | None:
    """The region (US state) of the customer's postal address, when the account has it."""
    value = case.account.get("state")
    return str(value) if value else None


def zones_of(case: Case) -> tuple[str, ...]:
    """Candidate time zones: the account's, else the postal address's, else the phone's."""
    phone = next((c.address for c in case.contacts if c.channel in PHONE_CHANNELS), None)
    return zones_for(time_zone=case.time_zone, region=region_of(case), phone=phone)


_RULES: dict[tuple[str, str | None], ContactRules] = {}


def rules_for(compiled: CompiledSpec, case: Case) -> ContactRules:
    """The workflow's contact rules, with the customer's jurisdiction applied."""
    key = (compiled.key, region_of(case))  # a spec version never changes: memoise
    rules = _RULES.get(key)
    if rules is None:
        rules = _RULES[key] = _rules(compiled, key[1])
    return rules


def _rules(compiled: CompiledSpec, region: str | None) -> ContactRules:
    policy = compiled.spec.contact
    hours = policy.hours_for(region)
    return ContactRules(
        window=ContactWindow(start=hours.start, end=hours.end),
        caps=tuple(Cap(scope=c.scope, max=c.max, per=c.per) for c in policy.caps),
        whatsapp_session=timedelta(hours=24),
    )
