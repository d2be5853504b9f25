"""Simulated customers: what they do about each message the sink delivered, and
when. Their visits to the mini-app are in `closeloop.sim.visits`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from closeloop.app.links import token_from_url
from closeloop.ids import rng_for
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
    if not message["link"]:  # a one-time code: read during the visit that asked for it
        return []
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
                    "channel": channel,
                    "account_index": account_index,
                },
            )
        )
    return out
