"""Contact policy, in the pure domain: consent, quiet hours, fatigue caps.

The engine and the dispatchers ask this package, never the channels, whether,
when and how a message may go out (`decide`), and record the answer's reason.
"""

from __future__ import annotations

from closeloop.contact.consent import ConsentRecord, in_force
from closeloop.contact.fatigue import Cap, Priority, Sent, earliest_under_caps
from closeloop.contact.hours import (
    DEFAULT_WINDOW,
    DEFAULT_ZONE,
    ContactWindow,
    next_allowed,
    next_contact_time,
    zone,
    zones_for,
)
from closeloop.contact.phone import e164_problem
from closeloop.contact.policy import ContactRules, Proposed, Recipient, Verdict, decide

__all__ = [
    "DEFAULT_WINDOW",
    "DEFAULT_ZONE",
    "Cap",
    "ConsentRecord",
    "ContactRules",
    "ContactWindow",
    "Priority",
    "Proposed",
    "Recipient",
    "Sent",
    "Verdict",
    "decide",
    "e164_problem",
    "earliest_under_caps",
    "in_force",
    "next_allowed",
    "next_contact_time",
    "zone",
    "zones_for",
]
