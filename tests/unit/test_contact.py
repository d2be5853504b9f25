"""Contact policy: quiet hours across time zones and DST, consent, fatigue caps."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closeloop.contact import (
    Cap,
    ConsentRecord,
    ContactRules,
    ContactWindow,
    Proposed,
    Recipient,
    Sent,
    decide,
    e164_problem,
    earliest_under_caps,
    in_force,
    next_allowed,
    zones_for,
)

# Zones with DST in both hemispheres, half- and quarter-hour offsets, and none.
ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "Pacific/Honolulu",
    "Europe/Madrid",
    "Atlantic/Canary",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Sao_Paulo",
]
QUARTER = timedelta(minutes=15)
# 2026-2027 covers every DST change of these zones twice.
instants = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)
quarters = st.integers(min_value=0, max_value=95).map(lambda q: time(q // 4, 15 * (q % 4)))


@st.composite
def windows(draw: st.DrawFn) -> ContactWindow:
    start = draw(quarters)
    end = draw(quarters.filter(lambda t: t > start))
    return ContactWindow(start=start, end=end)


def allowed_everywhere(at: datetime, zones: list[str], window: ContactWindow) -> bool:
    return all(window.contains(at, ZoneInfo(z)) for z in zones)


def brute_force(now: datetime, zones: list[str], window: ContactWindow) -> datetime | None:
    """The first allowed instant, by scanning quarter hours for 8 days.

    Window edges and every zone offset here are whole quarter hours, so any
    allowed stretch contains a quarter-hour instant.
    """
    if allowed_everywhere(now, zones, window):
        return now
    at = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0) + QUARTER
    for _ in range(8 * 96):
        if allowed_everywhere(at, zones, window):
            return at
        at += QUARTER
    return None


@settings(max_examples=300, deadline=None)
@given(
    now=instants,
    zones=st.lists(st.sampled_from(ZONES), min_size=1, max_size=3, unique=True),
    window=windows(),
)
def test_quiet_hours_defer_to_the_first_minute_allowed_in_every_zone(
    now: datetime, zones: list[str], window: ContactWindow
) -> None:
    got = next_allowed(now, zones, window)
    expected = brute_force(now, zones, window)
    if expected is None:
        assert got is None
        return
    assert got == expected
    assert got >= now and allowed_everywhere(got, zones, window)
    if got > now:
        assert not allowed_everywhere(got - timedelta(seconds=1), zones, window)


def test_quiet_hours_reach_a_zone_a_local_date_ahead() -> None:
    # Found by the property above: Lord Howe (UTC+10:30, +11 from 4 October 2026)
    # opens its 00:00 window on its 5 October, still inside the coming eight days.
    now = datetime(2026, 9, 27, 0, 0, tzinfo=UTC)
    window = ContactWindow(start=time(0, 0), end=time(9, 15))
    assert next_allowed(now, ["America/New_York", "Australia/Lord_Howe"], window) == datetime(
        2026, 10, 4, 13, 0, tzinfo=UTC
    )


def test_quiet_hours_across_new_yorks_dst_changes() -> None:
    ny = ["America/New_York"]
    # 2026-03-08 01:30 EST, the night clocks spring forward: 08:00 EDT is 12:00 UTC.
    assert next_allowed(datetime(2026, 3, 8, 6, 30, tzinfo=UTC), ny) == datetime(
        2026, 3, 8, 12, 0, tzinfo=UTC
    )
    # 2026-11-01 01:30 EDT, the night clocks fall back: 08:00 EST is 13:00 UTC.
    assert next_allowed(datetime(2026, 11, 1, 5, 30, tzinfo=UTC), ny) == datetime(
        2026, 11, 1, 13, 0, tzinfo=UTC
    )
    # 20:59 local is inside, 21:00 is not: the next opening is the next morning.
    assert next_allowed(datetime(2026, 7, 1, 0, 59, tzinfo=UTC), ny) == datetime(
        2026, 7, 1, 0, 59, tzinfo=UTC
    )
    assert next_allowed(datetime(2026, 7, 1, 1, 0, tzinfo=UTC), ny) == datetime(
        2026, 7, 1, 12, 0, tzinfo=UTC
    )


def test_an_ambiguous_zone_must_be_satisfied_everywhere() -> None:
    texas = zones_for(region="TX")
    assert texas == ("America/Chicago", "America/Denver")
    # 13:30 UTC in July: 08:30 in Chicago (inside), 07:30 in Denver (not yet).
    now = datetime(2026, 7, 1, 13, 30, tzinfo=UTC)
    assert next_allowed(now, ["America/Chicago"]) == now
    assert next_allowed(now, texas) == datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    # Kolkata and Los Angeles are 12.5 hours apart: no minute is inside 09:00-17:00 in both.
    office = ContactWindow(start=time(9), end=time(17))
    assert next_allowed(now, ["Asia/Kolkata", "America/Los_Angeles"], office) is None


def test_time_zone_sources_in_order_of_trust() -> None:
    assert zones_for(time_zone="Europe/Madrid", region="TX", phone="+12125550123") == (
        "Europe/Madrid",
    )
    assert zones_for(region="NY", phone="+34612345678") == ("America/New_York",)
    assert zones_for(phone="+34612345678") == ("Atlantic/Canary", "Europe/Madrid")
    assert zones_for(phone="+15555550101", default="America/Chicago") == ("America/Chicago",)
    assert zones_for(time_zone="Not/AZone", region="ZZ") == ("America/New_York",)


def test_e164() -> None:
    assert e164_problem("+12125550123") is None
    assert "E.164" in (e164_problem("2125550123") or "")
    assert "not a valid number" in (e164_problem("+15555550101") or "")
    assert "expected +12125550123" in (e164_problem("+1 212 555 0123") or "")
    assert "not a phone number" in (e164_problem("+abc") or "")


# -- consent -------------------------------------------------------------------
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def consent(granted: bool, at: datetime, address: str = "+12125550123") -> ConsentRecord:
    return ConsentRecord(
        channel="sms",
        address=address,
        granted=granted,
        at=at,
        actor="customer",
        method="sms keyword STOP" if not granted else "web form",
        source="test",
        notice_version="sms-terms-3",
    )


def message(**kw: object) -> Proposed:
    values: dict[str, object] = {"case_id": "c1", "channel": "sms", "address": "+12125550123"}
    values.update(kw)
    return Proposed(**values)  # type: ignore[arg-type]


NY = Recipient(zones=("America/New_York",))


def test_nothing_goes_to_a_suppressed_address_after_its_opt_out() -> None:
    ledger = (consent(True, T0 - timedelta(days=30)), consent(False, T0))
    assert in_force(ledger, "sms", "+12125550123", T0 - timedelta(seconds=1)) == ledger[0]
    who = Recipient(zones=NY.zones, consents=ledger)
    before = decide(message(), who, ContactRules(), T0 - timedelta(seconds=1))
    after = decide(message(), who, ContactRules(), T0)
    assert before.sends
    assert (after.action, after.reason) == ("block", "suppressed")
    assert "sms keyword STOP" in after.detail
    # Another address of the same customer is not suppressed by it.
    other = decide(message(address="+12125550199"), who, ContactRules(), T0)
    assert other.sends
    # Opting back in (START) lifts the suppression from that moment.
    again = Recipient(zones=NY.zones, consents=(*ledger, consent(True, T0 + timedelta(hours=1))))
    assert decide(message(), again, ContactRules(), T0 + timedelta(hours=1)).sends


def test_without_consent_nothing_is_sent() -> None:
    verdict = decide(message(account_consent=False), NY, ContactRules(), T0)
    assert (verdict.action, verdict.reason) == ("block", "no_consent")
    granted = Recipient(zones=NY.zones, consents=(consent(True, T0 - timedelta(days=1)),))
    assert decide(message(account_consent=False), granted, ContactRules(), T0).sends


def test_invalid_addresses_are_a_reason_not_an_error() -> None:
    verdict = decide(message(address="+15555550101"), NY, ContactRules(), T0)
    assert (verdict.action, verdict.reason) == ("block", "invalid_address")
    mail = decide(message(channel="email", address="nobody"), NY, ContactRules(), T0)
    assert mail.reason == "invalid_address"


def test_whatsapp_free_form_only_inside_the_session_window() -> None:
    wa = message(channel="whatsapp")
    assert decide(wa, NY, ContactRules(), T0).reason == "whatsapp_window"
    recent = Recipient(zones=NY.zones, last_inbound={"whatsapp": T0 - timedelta(hours=23)})
    stale = Recipient(zones=NY.zones, last_inbound={"whatsapp": T0 - timedelta(hours=24)})
    assert decide(wa, recent, ContactRules(), T0).sends
    assert decide(wa, stale, ContactRules(), T0).reason == "whatsapp_window"
    approved = message(channel="whatsapp", approved_template="payment_reminder_v2")
    assert decide(approved, stale, ContactRules(), T0).sends


def test_quiet_hours_defer_and_say_until_when() -> None:
    night = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)  # 22:00 in New York
    verdict = decide(message(), NY, ContactRules(), night)
    assert (verdict.action, verdict.reason) == ("defer", "quiet_hours")
    assert verdict.at == datetime(2026, 3, 3, 13, 0, tzinfo=UTC)


# -- fatigue caps --------------------------------------------------------------
WEEK = timedelta(days=7)
sends = st.lists(
    st.integers(min_value=0, max_value=14 * 24 * 60).map(
        lambda m: Sent(at=T0 - timedelta(minutes=m), case_id="other", channel="sms")
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(sent=sends, limit=st.integers(min_value=1, max_value=5), waiting=st.integers(0, 3))
def test_a_customer_cap_defers_to_the_first_free_moment(
    sent: list[Sent], limit: int, waiting: int
) -> None:
    cap = Cap(scope="customer", max=limit, per=WEEK)
    for priority, reserve in (("required", 0), ("nudge", waiting)):
        at, holding = earliest_under_caps(
            [cap], sent, case_id="c1", priority=priority, waiting_required=waiting, now=T0
        )  # type: ignore[arg-type]
        assert at is not None and at >= T0

        def used(moment: datetime) -> int:
            return sum(1 for s in sent if moment - WEEK < s.at <= moment)

        if used(T0) + reserve < limit:
            assert (at, holding) == (T0, None)
            continue
        assert holding == cap
        if reserve >= limit:
            assert at == T0 + WEEK  # waiting required notices alone fill the cap
            continue
        assert used(at) + reserve < limit  # room at `at` ...
        assert used(at - timedelta(microseconds=1)) + reserve >= limit  # ... and not before


def test_required_notices_go_before_nudges() -> None:
    cap = Cap(scope="customer", max=3, per=WEEK)
    sent = [Sent(at=T0 - timedelta(days=d), case_id="x", channel="email") for d in (1, 2)]
    required, _ = earliest_under_caps(
        [cap], sent, case_id="c1", priority="required", waiting_required=1, now=T0
    )
    nudge, holding = earliest_under_caps(
        [cap], sent, case_id="c1", priority="nudge", waiting_required=1, now=T0
    )
    assert required == T0  # the last slot is the required notice's
    assert nudge == T0 - timedelta(days=2) + WEEK and holding == cap


def test_caps_defer_through_decide_and_a_case_cap_stops_the_case() -> None:
    rules = ContactRules(
        caps=(Cap(scope="customer", max=2, per=WEEK), Cap(scope="case", max=3)),
    )
    two = tuple(Sent(at=T0 - timedelta(days=d), case_id="c9", channel="sms") for d in (1, 3))
    verdict = decide(message(), Recipient(zones=NY.zones, sent=two), rules, T0)
    assert (verdict.action, verdict.reason) == ("defer", "fatigue_cap")
    assert verdict.at == T0 - timedelta(days=3) + WEEK
    assert "at most 2 message(s) in 7 day(s) per customer" in verdict.detail
    mine = tuple(Sent(at=T0 - timedelta(days=d), case_id="c1", channel="sms") for d in (8, 9, 10))
    stopped = decide(message(), Recipient(zones=NY.zones, sent=mine), rules, T0)
    assert (stopped.action, stopped.reason) == ("block", "case_cap")


def test_a_deferral_lands_inside_contact_hours_too() -> None:
    rules = ContactRules(caps=(Cap(scope="customer", max=1, per=timedelta(hours=12)),))
    # Sent at 17:00 New York; the slot frees at 05:00, before contact hours open.
    sent = (Sent(at=datetime(2026, 3, 2, 22, 0, tzinfo=UTC), case_id="x", channel="sms"),)
    now = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    verdict = decide(message(), Recipient(zones=NY.zones, sent=sent), rules, now)
    assert (verdict.action, verdict.reason) == ("defer", "fatigue_cap")
    assert verdict.at == datetime(2026, 3, 3, 13, 0, tzinfo=UTC)  # 08:00 New York


def test_bad_windows_and_caps_are_refused() -> None:
    with pytest.raises(ValueError, match="start before it ends"):
        ContactWindow(start=time(21), end=time(8))
    with pytest.raises(ValueError, match="at least one"):
        Cap(scope="case", max=0)
    with pytest.raises(ValueError, match="needs a window"):
        Cap(scope="customer", max=3)


def test_a_workflow_and_jurisdiction_set_the_window(compiled: object) -> None:
    from closeloop.engine import rules_for
    from closeloop.spec import CompiledSpec
    from closeloop.testing import account, case_for

    assert isinstance(compiled, CompiledSpec)
    data = {
        "account_id": "A1",
        "amount_due": "10.00",
        "decline_code": "51",
        "due_date": "2026-03-01",
    }
    in_ny = case_for(compiled, data, account("A1"), now=T0)
    in_ma = in_ny.evolve(account={**in_ny.account, "state": "MA"})
    assert rules_for(compiled, in_ny).window == ContactWindow(start=time(8), end=time(21))
    assert rules_for(compiled, in_ma).window == ContactWindow(start=time(8), end=time(20))
    assert [c.max for c in rules_for(compiled, in_ma).caps] == [3, 4]
    at_2030 = datetime(2026, 3, 3, 0, 30, tzinfo=UTC)  # 19:30 in Boston and New York
    assert next_allowed(at_2030, ("America/New_York",), rules_for(compiled, in_ma).window) == (
        at_2030
    )
    late = datetime(2026, 3, 3, 1, 30, tzinfo=UTC)  # 20:30: allowed in New York, not MA
    assert next_allowed(late, ("America/New_York",), rules_for(compiled, in_ny).window) == late
    assert next_allowed(late, ("America/New_York",), rules_for(compiled, in_ma).window) == (
        datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    )
