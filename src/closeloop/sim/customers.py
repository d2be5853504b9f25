"""Simulated customers: they read what the sink delivered and act through the
same service functions the web mini-app calls."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from closeloop.app import CustomerService
from closeloop.app.links import token_from_url
from closeloop.errors import InputError, StateError
from closeloop.ids import rng_for, short_digest
from closeloop.sim.portfolio import customer

GRID = timedelta(minutes=15)
_MEAN_DELAY_HOURS = {"email": 6.0, "sms": 1.0, "whatsapp": 1.5, "webhook": 2.0}


def on_grid(at: datetime) -> datetime:
    """Round up to the simulator's 15-minute grid."""
    seconds = at.timestamp()
    step = GRID.total_seconds()
    return datetime.fromtimestamp(math.ceil(seconds / step) * step, tz=at.tzinfo)


@dataclass(frozen=True, kw_only=True)
class Reaction:
    kind: str  # "session" or "opt_out"
    at: datetime
    payload: dict[str, Any]


def react(
    seed: int, message: dict[str, Any], account_index: int, delivered_at: datetime
) -> list[Reaction]:
    """What the customer will do about one delivered message, and when."""
    key, channel = message["idempotency_key"], message["channel"]
    person = customer(seed, account_index)
    rng = rng_for(seed, "react", key)
    out = []
    if channel == "sms" and rng.random() < 0.015:
        out.append(
            Reaction(
                kind="opt_out",
                at=on_grid(delivered_at + timedelta(minutes=10)),
                payload={"case_id": message["case_id"], "channel": channel, "key": key},
            )
        )
        return out
    if rng.random() < person.open_propensity.get(channel, 0.3):
        hours = rng.expovariate(1 / _MEAN_DELAY_HOURS.get(channel, 3.0))
        out.append(
            Reaction(
                kind="session",
                at=on_grid(delivered_at + timedelta(hours=hours)),
                payload={
                    "case_id": message["case_id"],
                    "key": key,
                    "token": token_from_url(message["link"]),
                    "account_index": account_index,
                },
            )
        )
    return out


def run_session(
    seed: int, service: CustomerService, payload: dict[str, Any], secrets: dict[str, str]
) -> str:
    """One visit to the mini-app; returns what happened, for the record."""
    key = payload["key"]
    person = customer(seed, payload["account_index"])
    rng = rng_for(seed, "session", key)
    try:
        visit = service.redeem(payload["token"], key=f"sim:{key}:open")
        if rng.random() < 0.1:
            return "abandoned"
        for attempt in range(3):
            knows = rng.random() < person.knows_facts
            answers = secrets if knows else {**secrets, "date_of_birth": "1900-01-01"}
            if service.verify_identity(visit.case_id, answers, key=f"sim:{key}:id{attempt}"):
                break
            if rng.random() < 0.3:
                return "gave_up_identity"
        else:
            return "identity_failed"
        choice = rng.random()
        if choice < 0.03:
            service.dispute(visit.case_id, "I do not recognise this charge", key=f"sim:{key}:dp")
            return "disputed"
        if choice < 0.48:
            service.submit(
                visit.case_id,
                "update_card",
                {"token_ref": f"tok_{short_digest(key, 10)}"},
                key=f"sim:{key}:submit",
            )
            return "card_updated"
        offer = {o.kind: o for o in service.options(visit.case_id)}.get("pay_now")
        if offer is None or offer.maximum is None:
            return "no_offer"
        amount = offer.maximum
        if rng.random() < 0.3 and offer.minimum is not None:
            span = float(offer.maximum - offer.minimum)
            amount = (offer.minimum + Decimal(str(span * rng.random()))).quantize(
                Decimal("0.01"), rounding=ROUND_DOWN
            )
        otp = rng.random() < 0.85
        service.submit(
            visit.case_id,
            "pay_now",
            {"amount": str(amount)},
            key=f"sim:{key}:submit",
            one_time_code_verified=otp,
        )
        return "paid"
    except StateError as exc:
        return f"refused: {exc}"
    except InputError as exc:
        return f"link: {exc}"
