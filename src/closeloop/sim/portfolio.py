"""A seeded synthetic portfolio: accounts, balances, contact points, consent,
channel propensities, and the failed payments that open cases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from closeloop.ids import rng_for

# Time zones with a share of customers and area codes that are really theirs.
ZONES: list[tuple[str, str, float, tuple[str, ...]]] = [
    ("America/New_York", "NY", 0.30, ("212", "718", "917", "404", "305", "617")),
    ("America/Chicago", "IL", 0.26, ("312", "773", "214", "713", "612")),
    ("America/Denver", "CO", 0.08, ("303", "720", "801")),
    ("America/Phoenix", "AZ", 0.06, ("602", "480")),
    ("America/Los_Angeles", "CA", 0.26, ("213", "310", "415", "206", "503")),
    ("America/Anchorage", "AK", 0.02, ("907",)),
    ("Pacific/Honolulu", "HI", 0.02, ("808",)),
]
FIRST_NAMES = (
    "Ana",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Isabel",
    "Jamal",
    "Kara",
    "Luis",
    "Maya",
    "Noah",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tariq",
)
POSTCODES = {
    "NY": "100",
    "IL": "606",
    "CO": "802",
    "AZ": "850",
    "CA": "900",
    "AK": "995",
    "HI": "968",
}


@dataclass(frozen=True, kw_only=True)
class Customer:
    """How one simulated customer behaves: fixed per account and seed."""

    account_id: str
    engagement: float
    open_propensity: dict[str, float]
    knows_facts: float
    pays_elsewhere: bool


NOTICES = {
    "email": "e-statements-consent-2025-06",
    "sms": "sms-terms-2025-09",
    "whatsapp": "whatsapp-opt-in-2025-09",
}


def account_id(index: int) -> str:
    return f"ACC-{index:06d}"


def make_account(seed: int, index: int) -> dict[str, Any]:
    rng = rng_for(seed, "account", str(index))
    tz, state, _, codes = rng.choices(ZONES, weights=[z[2] for z in ZONES])[0]
    flags: list[str] = []
    for flag, p in (
        ("bankruptcy", 0.015),
        ("litigation", 0.01),
        ("deceased", 0.004),
        ("closed", 0.01),
        ("past_due", 0.6),
    ):
        if rng.random() < p:
            flags.append(flag)
    name = rng.choice(FIRST_NAMES)
    exchange = f"{rng.randint(2, 9)}{rng.randint(0, 99):02d}"
    number = f"+1{rng.choice(codes)}{exchange}{rng.randint(0, 9999):04d}"
    email_domain = "bounce.invalid" if rng.random() < 0.02 else "example.com"
    contacts = [
        {
            "channel": "email",
            "address": f"{name.lower()}.{index}@{email_domain}",
            "consent": rng.random() < 0.93,
        }
    ]
    if rng.random() < 0.85:
        contacts.append({"channel": "sms", "address": number, "consent": rng.random() < 0.8})
        if rng.random() < 0.5:
            contacts.append(
                {"channel": "whatsapp", "address": number, "consent": rng.random() < 0.7}
            )
    for contact in contacts:  # the consent notice each customer accepted, as the core keeps it
        if contact["consent"]:
            contact["notice"] = NOTICES[str(contact["channel"])]
    born = date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 50))
    return {
        "account_id": account_id(index),
        "first_name": name,
        "locale": "es" if rng.random() < 0.15 else "en",
        "time_zone": tz,
        "facts": {
            "flags": flags,
            "balance": round(rng.uniform(50, 4000), 2),
            "state": state,
            "product": rng.choice(["card", "loan", "line_of_credit"]),
            "days_past_due": rng.randint(0, 60),
        },
        "contacts": contacts,
        "payment_methods": _payment_methods(seed, index),
        "secrets": {
            "date_of_birth": born.isoformat(),
            "postal_code": f"{POSTCODES[state]}{rng.randint(0, 99):02d}",
        },
    }


def _payment_methods(seed: int, index: int) -> list[dict[str, str]]:
    """The ways to pay the core holds: mostly the card that was declined, some a bank account."""
    rng = rng_for(seed, "payment_methods", str(index))
    methods = []
    if rng.random() < 0.8:
        brand = rng.choice(["Visa", "Mastercard", "Amex"])
        expiry = f"{rng.randint(1, 12):02d}/{rng.randint(27, 31)}"
        last4 = f"{rng.randint(0, 9999):04d}"
        methods.append(
            {
                "id": f"pm_{index}_card",
                "kind": "card",
                "brand": brand,
                "last4": last4,
                "expiry": expiry,
            }
        )
    if rng.random() < 0.4:
        last4 = f"{rng.randint(0, 9999):04d}"
        methods.append({"id": f"pm_{index}_bank", "kind": "bank", "last4": last4})
    return methods


def customer(seed: int, index: int) -> Customer:
    rng = rng_for(seed, "customer", str(index))
    engagement = min(1.0, max(0.05, rng.gauss(0.6, 0.22)))
    return Customer(
        account_id=account_id(index),
        engagement=engagement,
        open_propensity={
            "email": 0.45 * engagement,
            "sms": 0.7 * engagement,
            "whatsapp": 0.75 * engagement,
        },
        knows_facts=0.93 if rng.random() < 0.95 else 0.3,
        pays_elsewhere=rng.random() < 0.12,
    )


@dataclass(frozen=True, kw_only=True)
class PlannedEvent:
    id: str
    type: str
    at: datetime
    data: dict[str, Any]


def backend_events(seed: int, index: int, start: datetime, days: int) -> list[PlannedEvent]:
    """The failed payment (if any) of one account, and a later payment elsewhere."""
    rng = rng_for(seed, "events", str(index))
    if rng.random() > 0.65:
        return []
    # Triggers arrive on a 15-minute grid during the run's window.
    slots = max(1, days * 96)
    at = start + timedelta(minutes=15 * rng.randrange(slots))
    amount = round(min(2500.0, rng.lognormvariate(4.9, 0.7)), 2)
    if rng.random() < 0.01:
        amount = 0.0
    ident = f"pf-{seed}-{index:06d}"
    events = [
        PlannedEvent(
            id=ident,
            type="payment.failed",
            at=at,
            data={
                "account_id": account_id(index),
                "amount_due": f"{amount:.2f}",
                "decline_code": rng.choice(["51", "05", "54", "14"]),
                "due_date": (at.date() - timedelta(days=rng.randint(0, 3))).isoformat(),
            },
        )
    ]
    if customer(seed, index).pays_elsewhere:
        later = at + timedelta(minutes=15 * rng.randint(4, 96 * 6))
        events.append(
            PlannedEvent(
                id=f"pp-{seed}-{index:06d}",
                type="payment.posted",
                at=later,
                data={"account_id": account_id(index), "amount": f"{amount:.2f}"},
            )
        )
    return events
