"""Whether, when and how one message may go out, and why: `decide`.

Checked in this order, the first that applies wins:

1. the address is usable (E.164 for SMS and WhatsApp) - else blocked;
2. consent in force for the channel and address (the ledger, else the
   account record) - a withdrawal blocks as ``suppressed``, no consent blocks;
3. WhatsApp free-form text only within 24 hours of the customer's last
   inbound message, else only an approved template - else blocked;
4. fatigue caps - deferred until a slot frees (blocked only by a per-case cap
   with no window);
5. quiet hours in every candidate time zone - deferred to the next allowed
   minute (blocked only when no minute is allowed everywhere).

A blocked message lets the cadence fall back to another channel; a deferred
one is sent later by the same path, and both are recorded with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from closeloop.contact.consent import ConsentRecord, in_force
from closeloop.contact.fatigue import Cap, Priority, Sent, earliest_under_caps
from closeloop.contact.hours import DEFAULT_WINDOW, ContactWindow, next_allowed
from closeloop.contact.phone import e164_problem

PHONE_CHANNELS = frozenset({"sms", "whatsapp"})
Reason = Literal[
    "",
    "invalid_address",
    "suppressed",
    "no_consent",
    "whatsapp_window",
    "fatigue_cap",
    "case_cap",
    "quiet_hours",
    "no_common_hours",
    "rollout_halted",  # the case's rollout is halted and pauses the outreach of enrolled cases
    "case_closed",  # the case closed while its message waited (quiet hours, a halt)
]


@dataclass(frozen=True, kw_only=True)
class ContactRules:
    """A workflow's contact policy (with the recipient's jurisdiction applied)."""

    window: ContactWindow = DEFAULT_WINDOW
    caps: tuple[Cap, ...] = ()
    whatsapp_session: timedelta = timedelta(hours=24)


@dataclass(frozen=True, kw_only=True)
class Proposed:
    """One message the cadence wants to send."""

    case_id: str
    channel: str
    address: str
    priority: Priority = "nudge"
    account_consent: bool = True  # what the system of record says, absent a ledger record
    approved_template: str | None = None  # WhatsApp: a template the provider approved


@dataclass(frozen=True, kw_only=True)
class Recipient:
    """What is known of the customer across every workflow, at decision time."""

    zones: tuple[str, ...]
    consents: tuple[ConsentRecord, ...] = ()
    sent: tuple[Sent, ...] = ()
    waiting_required: int = 0
    last_inbound: Mapping[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    action: Literal["send", "defer", "block"]
    reason: Reason = ""
    detail: str = ""
    at: datetime | None = None  # send: now; defer: when to try again

    @property
    def sends(self) -> bool:
        return self.action == "send"


def decide(message: Proposed, recipient: Recipient, rules: ContactRules, now: datetime) -> Verdict:
    """Send now, defer (with when) or block (with why) one message."""
    if message.channel in PHONE_CHANNELS:
        problem = e164_problem(message.address)
        if problem:
            return Verdict(action="block", reason="invalid_address", detail=problem)
    elif message.channel == "email" and "@" not in message.address:
        return Verdict(
            action="block",
            reason="invalid_address",
            detail=f"{message.address!r} is not an email address",
        )
    record = in_force(recipient.consents, message.channel, message.address, now)
    if record is not None and not record.granted:
        return Verdict(
            action="block",
            reason="suppressed",
            detail=f"opted out {record.at.isoformat()} by {record.actor} ({record.method})",
        )
    if record is None and not message.account_consent:
        return Verdict(
            action="block", reason="no_consent", detail=f"no consent for {message.channel}"
        )
    if message.channel == "whatsapp" and message.approved_template is None:
        last = recipient.last_inbound.get("whatsapp")
        if last is None or now - last >= rules.whatsapp_session:
            return Verdict(
                action="block",
                reason="whatsapp_window",
                detail="free-form WhatsApp only within 24 h of the customer's last message "
                "and this template is not an approved one",
            )
    at, cap = earliest_under_caps(
        rules.caps,
        recipient.sent,
        case_id=message.case_id,
        priority=message.priority,
        waiting_required=recipient.waiting_required,
        now=now,
    )
    if at is None:
        assert cap is not None
        return Verdict(
            action="block",
            reason="case_cap",
            detail=f"this case has had its {cap.max} message(s)",
        )
    allowed = next_allowed(at, recipient.zones, rules.window)
    if allowed is None:
        return Verdict(
            action="block",
            reason="no_common_hours",
            detail=f"no minute is inside {rules.window.start:%H:%M}-{rules.window.end:%H:%M} "
            f"in every possible time zone ({', '.join(recipient.zones)})",
        )
    if allowed == now:
        return Verdict(action="send", at=now)
    if cap is not None:
        per = f" in {_days(cap.per)}" if cap.per else ""
        return Verdict(
            action="defer",
            reason="fatigue_cap",
            detail=f"at most {cap.max} message(s){per} per {cap.scope}",
            at=allowed,
        )
    return Verdict(
        action="defer",
        reason="quiet_hours",
        detail=f"outside {rules.window.start:%H:%M}-{rules.window.end:%H:%M} in "
        f"{', '.join(recipient.zones)}",
        at=allowed,
    )


def _days(period: timedelta) -> str:
    days = period / timedelta(days=1)
    return f"{days:g} day(s)" if days >= 1 else f"{period}"
