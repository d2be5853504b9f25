"""The resolution spec: one versioned YAML file per workflow.

A spec says what starts a case (trigger), who may be handled (eligibility),
how sure we must be of who the customer is (identity), what "done" means and
what must be written back for it (outcomes, evidence), what the customer may
choose (mini-app options), how and when we reach them (outreach), and where
cases that leave the happy path go (exceptions). Variants are the other
treatments a rollout's experiment compares: each replaces the outreach or the
identity checks for the cases of the arm that bears its name.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

FieldType = Literal["string", "decimal", "integer", "boolean", "date", "timestamp", "list"]
Channel = Literal["email", "sms", "whatsapp", "webhook"]
Operation = Literal[
    "read_account",
    "post_payment",
    "set_arrangement",
    "store_payment_method",
    "retry_charge",
    "update_contact",
    "clear_flag",
    "set_flag",
    "add_note",
    "attach_document",
]
OptionKind = Literal[
    "pay_now", "update_card", "arrangement", "confirm_details", "upload_document", "attestation"
]
KnownFact = Literal["date_of_birth", "postal_code", "last4_ssn", "account_last4"]
Evidence = Literal[
    "identity_level",
    "identity_method",
    "consent_text_version",
    "token_ref",
    "payment_ref",
    "amount",
    "submitted_at",
    "link_channel",
    "attestation_text_version",
    "document_ref",
]
ExceptionReason = Literal[
    "identity_locked", "writeback_failed", "disputed", "delivery_failed", "policy_error"
]
StepCondition = Literal["always", "not_opened", "not_verified"]

_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
EVENT_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"


def parse_duration(value: Any) -> timedelta:
    """Parse ``10s``, ``30m``, ``24h``, ``3d`` or ``1w`` into a timedelta."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value)) if isinstance(value, str | int) else None
    if match is None:
        raise ValueError("expected a duration such as 10s, 30m, 24h, 3d or 1w")
    amount = int(match.group(1))
    if amount <= 0:
        raise ValueError("a duration must be longer than zero")
    return timedelta(**{_UNITS[match.group(2)]: amount})


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Trigger(SpecModel):
    event: Annotated[str, Field(pattern=EVENT_PATTERN)]
    key: Name = Field(description="the field that names the customer's account")
    fields: dict[Name, FieldType]
    closes_on: list[Annotated[str, Field(pattern=EVENT_PATTERN)]] = Field(default_factory=list)


class Rule(SpecModel):
    name: Name
    rule: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class StepUp(SpecModel):
    when: str = Field(min_length=1)
    require: Literal["one_time_code"]


class Identity(SpecModel):
    known_facts: list[KnownFact] = Field(default_factory=list)
    max_attempts: int = Field(default=3, ge=1, le=10)
    code_attempts: int = Field(
        default=5, ge=1, le=10, description="wrong one-time codes before the case locks"
    )
    step_up: list[StepUp] = Field(default_factory=list)


class Writeback(SpecModel):
    operation: Operation
    argument: str | None = None

    @classmethod
    def coerce(cls, value: Any) -> Any:
        # `post_payment` or `{clear_flag: past_due}`: the form a reviewer reads.
        if isinstance(value, str):
            return {"operation": value}
        if isinstance(value, dict) and len(value) == 1 and "operation" not in value:
            ((operation, argument),) = value.items()
            return {"operation": operation, "argument": argument}
        return value

    def __str__(self) -> str:
        return f"{self.operation}({self.argument})" if self.argument else self.operation


WritebackItem = Annotated[Writeback, BeforeValidator(Writeback.coerce)]


class Outcome(SpecModel):
    description: str = Field(min_length=1)
    writebacks: list[WritebackItem] = Field(min_length=1)
    evidence: list[Evidence] = Field(default_factory=list)


class Option(SpecModel):
    outcome: Name
    label: str = Field(min_length=1)
    min: str | None = None
    max: str | None = None
    # arrangement: the plans policy allows (the total is `max`)
    instalments: list[Annotated[int, Field(ge=2, le=36)]] | None = None
    frequencies: list[Literal["weekly", "fortnightly", "monthly"]] | None = None
    first_within: Duration | None = None
    min_instalment: str | None = None
    # upload_document: what may be uploaded, and how large
    types: list[Literal["pdf", "jpeg", "png"]] | None = None
    max_mb: int | None = Field(default=None, ge=1, le=25)
    # attestation: the statement the customer confirms, per locale, and its version
    statement: dict[str, str] | None = None
    statement_version: str | None = Field(default=None, min_length=1, max_length=100)


class MiniApp(SpecModel):
    options: dict[OptionKind, Option] = Field(min_length=1)


class Fallback(SpecModel):
    channel: Channel
    template: Name


class Step(SpecModel):
    name: Name
    channel: Channel
    template: Name
    wait: Duration
    condition: StepCondition = Field(default="always", alias="if")
    fallback: Fallback | None = None
    priority: Literal["required", "nudge"] = Field(
        default="nudge", description="required notices go before nudges under fatigue caps"
    )


class Outreach(SpecModel):
    steps: list[Step] = Field(min_length=1)
    expires_after: Duration


class LocaleText(SpecModel):
    subject: str | None = None
    body: str = Field(min_length=1)


class Template(SpecModel):
    """A message; `subject` and `body` are the default locale's (English)."""

    channel: Channel
    subject: str | None = None
    body: str = Field(min_length=1)
    locales: dict[Annotated[str, Field(pattern=r"^[a-z]{2}$")], LocaleText] = Field(
        default_factory=dict, description="the same message in other languages, by language code"
    )
    approved_name: str | None = Field(
        default=None,
        min_length=1,
        description="WhatsApp: the provider-approved template this body is (sendable any time); "
        "for Twilio its ContentSid",
    )
    approved_variables: list[Name] = Field(
        default_factory=list,
        description="what fills the approved template's {{1}}, {{2}}, ... in order",
    )


def parse_clock_time(value: Any) -> time:
    """Parse ``08:00`` (24-hour local time)."""
    if isinstance(value, time):
        return value
    match = _CLOCK.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise ValueError("expected a local time such as 08:00 or 20:30")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ValueError("expected a local time between 00:00 and 23:59")
    return time(hour, minute)


ClockTime = Annotated[time, BeforeValidator(parse_clock_time)]


def text_for(template: Template, locale: str | None) -> tuple[str | None, str]:
    """The subject and body in the customer's language (``es``, ``es-US``), else the default."""
    language = (locale or "").split("-")[0].split("_")[0].lower()
    variant = template.locales.get(language)
    if variant is None:
        return template.subject, template.body
    return variant.subject if variant.subject is not None else template.subject, variant.body


class Hours(SpecModel):
    """Local hours in which the customer may be contacted."""

    start: ClockTime = time(8, 0)
    end: ClockTime = time(21, 0)

    @model_validator(mode="after")
    def _ordered(self) -> Hours:
        if not self.start < self.end:
            raise ValueError(
                f"hours must start before they end ({self.start:%H:%M}-{self.end:%H:%M})"
            )
        return self


class CapRule(SpecModel):
    scope: Literal["customer", "case"]
    max: int = Field(ge=1, le=1000)
    per: Duration | None = None

    @model_validator(mode="after")
    def _window(self) -> CapRule:
        if self.scope == "customer" and self.per is None:
            raise ValueError("a customer cap needs a window, for example per: 7d")
        return self


class ContactPolicy(SpecModel):
    hours: Hours = Field(default_factory=Hours)
    jurisdictions: dict[Annotated[str, Field(pattern=r"^[A-Z]{2}$")], Hours] = Field(
        default_factory=dict, description="hours by the region (US state) of the postal address"
    )
    caps: list[CapRule] = Field(default_factory=list)

    def hours_for(self, region: str | None) -> Hours:
        return self.jurisdictions.get((region or "").upper(), self.hours)


# Cohorts a case can be in besides an experiment's arms: a variant cannot take their names.
RESERVED_COHORTS = ("control", "outside", "enrolled", "ineligible")


class Variant(SpecModel):
    """Another treatment of the workflow, for the cases of the rollout arm of its name."""

    description: str = ""
    outreach: Outreach | None = None
    identity: Identity | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> Variant:
        if self.outreach is None and self.identity is None:
            raise ValueError("a variant replaces outreach, identity or both")
        return self


class ExceptionRoute(SpecModel):
    queue: Name
    sla: Duration


class Spec(SpecModel):
    workflow: Name
    version: int = Field(ge=1)
    title: str = Field(min_length=1)
    description: str = ""
    trigger: Trigger
    eligibility: list[Rule] = Field(default_factory=list)
    identity: Identity = Field(default_factory=Identity)
    outcomes: dict[Name, Outcome] = Field(min_length=1)
    miniapp: MiniApp
    outreach: Outreach
    templates: dict[Name, Template] = Field(default_factory=dict)
    exceptions: dict[ExceptionReason, ExceptionRoute] = Field(default_factory=dict)
    contact: ContactPolicy = Field(default_factory=ContactPolicy)
    variants: dict[Name, Variant] = Field(
        default_factory=dict, description="treatments compared by a rollout's experiment, by arm"
    )

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, variants: dict[str, Variant]) -> dict[str, Variant]:
        for name in variants:
            if name in RESERVED_COHORTS:
                raise ValueError(f"{name!r} names a cohort, not an arm: choose another name")
        return variants

    @field_validator("eligibility")
    @classmethod
    def _unique_rule_names(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return rules

    @property
    def key(self) -> str:
        """The spec's identity in storage: ``workflow@version``."""
        return f"{self.workflow}@{self.version}"

    def with_variant(self, name: str) -> Spec:
        """The spec as the cases of arm `name` get it: the variant's sections replace these."""
        variant = self.variants[name]
        changed = {k: getattr(variant, k) for k in ("outreach", "identity")}
        return self.model_copy(
            update={k: v for k, v in changed.items() if v is not None} | {"variants": {}}
        )

    def step_offsets(self) -> list[timedelta]:
        """When each outreach step is due, measured from the case's opening."""
        offsets, at = [], timedelta(0)
        for step in self.outreach.steps:
            offsets.append(at)
            at += step.wait
        return offsets
