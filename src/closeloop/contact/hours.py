"""Quiet hours: when a recipient may be contacted, in their local time.

A recipient's time zone comes from the account when the system of record
states it, else from the postal address (US state), else from the phone
number (`phonenumbers` time-zone data). When that leaves more than one
candidate zone, a send must fall inside the contact window in every one of
them. A message that falls in quiet hours is deferred to the next minute
that is allowed everywhere, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import us
from phonenumbers import timezone as phone_zones

DEFAULT_ZONE = "America/New_York"
_LOOKAHEAD_DAYS = 8  # a daily window repeats; a week and a day covers every DST change


@dataclass(frozen=True, kw_only=True)
class ContactWindow:
    """Local hours in which messages may be sent (default 08:00-21:00)."""

    start: time = time(8, 0)
    end: time = time(21, 0)

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"contact window must start before it ends ({self.start}-{self.end})")

    def contains(self, moment: datetime, zone: ZoneInfo) -> bool:
        local = moment.astimezone(zone).time()
        return self.start <= local < self.end


DEFAULT_WINDOW = ContactWindow()


@lru_cache(maxsize=512)
def zone(name: str | None) -> ZoneInfo:
    """The named zone, or the default for an unknown or missing name."""
    try:
        return ZoneInfo(name or DEFAULT_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_ZONE)


@lru_cache(maxsize=4096)
def zones_for(
    *,
    time_zone: str | None = None,
    country: str | None = None,
    region: str | None = None,
    phone: str | None = None,
    default: str = DEFAULT_ZONE,
) -> tuple[str, ...]:
    """Candidate time zones of a recipient, most reliable source first."""
    if time_zone and _known(time_zone):
        return (time_zone,)
    if region and (country or "US").upper() == "US":
        state = us.states.lookup(region)
        if state is not None and state.time_zones:
            return tuple(sorted({z for z in state.time_zones if _known(z)}))
    if phone:
        try:
            number = phonenumbers.parse(phone, None)
        except phonenumbers.NumberParseException:
            number = None
        if number is not None and phonenumbers.is_valid_number(number):
            found = tuple(sorted(z for z in phone_zones.time_zones_for_number(number) if _known(z)))
            if found:
                return found
    return (default,)


def _known(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def next_allowed(
    now: datetime, zones: Sequence[str], window: ContactWindow = DEFAULT_WINDOW
) -> datetime | None:
    """`now` if it is inside the window in every zone, else the first such minute.

    None when no minute in the coming week is inside the window everywhere
    (candidate zones too far apart for this window).
    """
    tzs = [zone(z) for z in zones] or [zone(None)]
    if all(window.contains(now, tz) for tz in tzs):
        return now
    # The answer, if any, is the opening of some zone's window on some day. A zone
    # ahead of `now`'s reaches one local date further within the same span.
    openings = []
    limit = now + timedelta(days=_LOOKAHEAD_DAYS)
    for tz in tzs:
        first = now.astimezone(tz).date()
        for day in range(_LOOKAHEAD_DAYS + 1):
            local = datetime.combine(first + timedelta(days=day), window.start, tzinfo=tz)
            at = local.astimezone(now.tzinfo)
            if now < at <= limit:
                openings.append(at)
    for at in sorted(openings):
        if all(window.contains(at, tz) for tz in tzs):
            return at
    return None


def next_contact_time(
    now: datetime, tz_name: str | None, window: ContactWindow = DEFAULT_WINDOW
) -> datetime:
    """`now` if it is inside the recipient's window, else the window's next opening."""
    allowed = next_allowed(now, (tz_name or DEFAULT_ZONE,), window)
    assert allowed is not None  # one zone always has an opening within a day
    return allowed
