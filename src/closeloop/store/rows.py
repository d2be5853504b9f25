"""Cases and decisions to and from rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from closeloop.engine import Case, Contact, Status

_STATE_FIELDS = (
    "data",
    "account",
    "time_zone",
    "next_step",
    "link_opened",
    "verified",
    "identity_level",
    "identity_failures",
    "outcome",
    "submission",
    "touches",
    "agent_touched",
    "reason",
)


def case_to_row(case: Case) -> dict[str, Any]:
    state: dict[str, Any] = {name: getattr(case, name) for name in _STATE_FIELDS}
    state["data"] = dict(case.data)
    state["account"] = dict(case.account)
    state["submission"] = dict(case.submission)
    state["contacts"] = [
        {"channel": c.channel, "address": c.address, "consent": c.consent} for c in case.contacts
    ]
    state["pending_writebacks"] = list(case.pending_writebacks)
    return {
        "id": case.id,
        "workflow": case.workflow,
        "trigger_id": case.trigger_id,
        "account_id": case.account_id,
        "status": case.status.value,
        "cohort": case.cohort,
        "opened_at": case.opened_at,
        "updated_at": case.updated_at,
        "closed_at": case.closed_at,
        "seq": case.seq,
        "state": state,
    }


def case_from_row(row: Mapping[Any, Any]) -> Case:
    state = dict(row["state"])
    contacts = tuple(Contact(**c) for c in state.pop("contacts", []))
    pending = tuple(state.pop("pending_writebacks", []))
    return Case(
        id=row["id"],
        workflow=row["workflow"],
        trigger_id=row["trigger_id"],
        account_id=row["account_id"],
        status=Status(row["status"]),
        cohort=row["cohort"],
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        closed_at=row["closed_at"],
        seq=row["seq"],
        contacts=contacts,
        pending_writebacks=pending,
        **{name: state[name] for name in _STATE_FIELDS if name in state},
    )
