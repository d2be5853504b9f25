"""Consent: who agreed to be contacted where, and who withdrew, with evidence.

Consent is kept per channel and address, as an append-only ledger: each
record says whether contact is allowed, when, who gave or withdrew it, how,
the version of the notice they saw and where the record came from. The
record in force at a moment is the latest one at or before it. An address
whose record in force is a withdrawal is suppressed for every workflow and
every account that shares it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, kw_only=True)
class ConsentRecord:
    channel: str
    address: str
    granted: bool
    at: datetime
    actor: str  # who: "customer", "agent:ana", "system_of_record"
    method: str  # how: "sms keyword STOP", "one-click unsubscribe", "account record"
    source: str  # where: a workflow, "twilio inbound", "core banking"
    notice_version: str | None = None  # the notice text the customer was shown
    account_id: str | None = None


def in_force(
    records: Iterable[ConsentRecord], channel: str, address: str, now: datetime
) -> ConsentRecord | None:
    """The latest record for this channel and address at or before `now`."""
    found: ConsentRecord | None = None
    for record in records:
        if record.channel != channel or record.address != address or record.at > now:
            continue
        if found is None or record.at >= found.at:
            found = record
    return found
