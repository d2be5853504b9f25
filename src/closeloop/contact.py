"""When a message may go out: quiet hours in the recipient's local time.

Consent, fatigue caps and jurisdiction rules grow here; the engine asks this
module, never the channels, whether and when it may contact someone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True, kw_only=True)
class ContactWindow:
    """Local hours in which messages may be sent (default 08:00-21:00)."""

    start: time = time(8, 0)
    end: time = time(21, 0)


DEFAULT_WINDOW = ContactWindow()
DEFAULT_ZONE = "America/New_York"


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or DEFAULT_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_ZONE)


def next_contact_time(
    now: datetime, tz_name: str | None, window: ContactWindow = DEFAULT_WINDOW
) -> datetime:
    """`now` if it is inside the recipient's window, else the window's next opening."""
    tz = zone(tz_name)
    local = now.astimezone(tz)
    if window.start <= local.time() < window.end:
        return now
    day = local.date() if local.time() < window.start else local.date() + timedelta(days=1)
    opening = datetime.combine(day, window.start, tzinfo=tz)
    return opening.astimezone(now.tzinfo)
