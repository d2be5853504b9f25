"""Security-relevant events as OCSF 1.3.0 JSON, one event per line, for a SIEM.

    staff sign-in, sign-out, refused tokens   Authentication (3002): Logon 1, Logoff 2
    customers' identity checks in mini-apps   Authentication (3002): Logon 1
    staff users and API tokens changed        Account Change (3001): Create 1, Password
                                              Change 3, Disable 5, Attach 7 / Detach 8 Policy
    consent to contact granted or withdrawn   Entity Management (3004): Enable 8, Disable 9
    writebacks to the system of record        API Activity (6003): Create 1, Update 3

Every event carries `category_uid` (the class's thousands), `class_uid`,
`activity_id`, `type_uid = class_uid * 100 + activity_id`, `severity_id`,
`time` (epoch milliseconds), `status_id` and `metadata` (product, schema
version, the source row's uid). Customers appear as pseudonymous account ids
and contact addresses as keyed digests, as in the other export formats,
unless an admin asks for personal data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from closeloop.app.export import pseudonym
from closeloop.app.telemetry import scrub
from closeloop.store import Store

VERSION = "1.3.0"
PRODUCT = {"name": "closeloop", "vendor_name": "closeloop", "version": "0.1.0"}
AUTHENTICATION, ACCOUNT_CHANGE, ENTITY_MANAGEMENT, API_ACTIVITY = 3002, 3001, 3004, 6003
CLASS_NAMES = {
    AUTHENTICATION: "Authentication",
    ACCOUNT_CHANGE: "Account Change",
    ENTITY_MANAGEMENT: "Entity Management",
    API_ACTIVITY: "API Activity",
}
CATEGORY_NAMES = {3: "Identity & Access Management", 6: "Application Activity"}
SUCCESS, FAILURE = 1, 2
_STAFF_ACCOUNT_CHANGES = {
    "user_add": (1, "Create"),
    "password_set": (3, "Password Change"),
    "user_disable": (5, "Disable"),
    "token_create": (7, "Attach Policy"),  # a token: a credential bound to a role
    "token_revoke": (8, "Detach Policy"),
}
_UPDATES = ("update", "store", "set", "change", "confirm")


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def event(
    class_uid: int,
    activity_id: int,
    activity_name: str,
    *,
    time: datetime,
    uid: str,
    status_id: int = SUCCESS,
    **attributes: Any,
) -> dict[str, Any]:
    """One OCSF event: the classification and metadata every class requires, and `attributes`."""
    category = class_uid // 1000
    return {
        "category_uid": category,
        "category_name": CATEGORY_NAMES[category],
        "class_uid": class_uid,
        "class_name": CLASS_NAMES[class_uid],
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{CLASS_NAMES[class_uid]}: {activity_name}",
        "severity_id": 1 if status_id == SUCCESS else 3,  # informational; a failure: medium
        "time": _ms(time),
        "status_id": status_id,
        "status": "Success" if status_id == SUCCESS else "Failure",
        "metadata": {"version": VERSION, "product": PRODUCT, "uid": uid},
        **attributes,
    }


class Mapper:
    """closeloop's rows as OCSF events; customers pseudonymised unless `personal`."""

    def __init__(self, key: bytes, *, personal: bool = False) -> None:
        self.key = key
        self.personal = personal

    def _digest(self, value: str, prefix: str) -> str:
        if self.personal:
            return value
        return pseudonym(self.key, value, prefix)

    def staff(self, r: dict[str, Any]) -> dict[str, Any]:
        status = SUCCESS if r["outcome"] == "success" else FAILURE
        uid = f"staff_audit:{r['id']}"
        endpoint = {"ip": r["remote"]} if r["remote"] else {"name": "closeloop cli"}
        if r["action"] in ("sign_in", "sign_out", "token_use"):
            activity = (2, "Logoff") if r["action"] == "sign_out" else (1, "Logon")
            token = r["action"] == "token_use"
            return event(
                AUTHENTICATION,
                *activity,
                time=r["at"],
                uid=uid,
                status_id=status,
                user={
                    "name": r["actor"],
                    "type_id": 4 if token else 1,
                    "type": "Service" if token else "User",
                },
                service={"name": "closeloop api" if token else "closeloop console"},
                src_endpoint=endpoint,
                auth_protocol_id=99,
                auth_protocol="api token"
                if token
                else (r["detail"] if status == SUCCESS else "password"),
                status_detail=r["detail"] if status == FAILURE else None,
                message=f"{r['action'].replace('_', ' ')}: {r['outcome']}",
            )
        activity_id, name = _STAFF_ACCOUNT_CHANGES.get(r["action"], (99, "Other"))
        target = r["detail"].split(" ", 1)[0]
        return event(
            ACCOUNT_CHANGE,
            activity_id,
            name,
            time=r["at"],
            uid=uid,
            status_id=status,
            user={"name": target, "type_id": 1, "type": "User"},
            actor={"user": {"name": r["actor"]}},
            src_endpoint=endpoint,
            message=f"{r['action'].replace('_', ' ')}: {r['detail']}",
        )

    def identity(self, r: dict[str, Any]) -> dict[str, Any]:
        data = r["data"] or {}
        passed = r["kind"] == "identity_passed"
        method = str(data.get("method") or "known_facts")
        return event(
            AUTHENTICATION,
            1,
            "Logon",
            time=r["at"],
            uid=f"case_event:{r['case_id']}:{r['seq']}",
            status_id=SUCCESS if passed else FAILURE,
            user={"uid": self._digest(r["account_id"], "acct"), "type_id": 1, "type": "User"},
            service={"name": f"closeloop mini-app ({r['workflow'].split('@')[0]})"},
            auth_protocol_id=99,
            auth_protocol=method,
            is_mfa=method == "one_time_code",
            status_detail=None if passed else "INVALID_CREDENTIALS",
            message=f"identity check by {method}: {'passed' if passed else 'failed'}",
            unmapped={"case_id": r["case_id"]},
        )

    def consents(self, r: dict[str, Any]) -> dict[str, Any]:
        granted = bool(r["granted"])
        address = self._digest(f"{r['channel']}:{r['address']}", "addr")
        return event(
            ENTITY_MANAGEMENT,
            *((8, "Enable") if granted else (9, "Disable")),
            time=r["at"],
            uid=f"consent:{r['id']}",
            entity={
                "type": "contact consent",
                "uid": address,
                "name": r["channel"],
                "version": r["notice_version"],
            },
            actor={"user": {"name": r["actor"]}},
            comment=scrub(f"{r['method']} ({r['source']})"),
            message=f"consent to contact by {r['channel']} {'granted' if granted else 'withdrawn'}",
            unmapped={"account": self._digest(r["account_id"], "acct")}
            if r["account_id"]
            else None,
        )

    def writebacks(self, r: dict[str, Any]) -> dict[str, Any]:
        payload, result = r["payload"] or {}, r["result"] or {}
        operation = str(payload.get("operation") or "")
        activity = (3, "Update") if operation.startswith(_UPDATES) else (1, "Create")
        ok = r["status"] == "done"
        return event(
            API_ACTIVITY,
            *activity,
            time=r["updated_at"],
            uid=f"writeback:{r['idempotency_key']}",
            status_id=SUCCESS if ok else FAILURE,
            actor={"app_name": "closeloop"},
            api={
                "operation": operation,
                "request": {"uid": r["idempotency_key"]},
                "response": {
                    "code": 0 if ok else 1,
                    "message": scrub(str(result.get("error") or "")) or None,
                },
            },
            src_endpoint={"name": "closeloop worker"},
            dst_endpoint={"name": "system of record"},
            resources=[{"type": "case", "uid": r["case_id"]}],
            status_detail=None if ok else scrub(str(result.get("error") or "")),
            message=f"writeback {operation} ({payload.get('outcome')}): "
            f"{'done' if ok else 'failed'} after {r['attempts']} attempt(s)",
        )


def _clean(value: Any) -> Any:
    """Without the attributes that have no value (OCSF leaves out what it does not know)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def events(
    store: Store, mapper: Mapper, since: datetime | None, until: datetime | None
) -> Iterator[dict[str, Any]]:
    """Every security-relevant event in [since, until), source by source."""
    sources: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "staff": mapper.staff,
        "identity": mapper.identity,
        "consents": mapper.consents,
        "writebacks": mapper.writebacks,
    }
    with store.read() as tx:
        for source, make in sources.items():
            for rows in tx.rows_to_export(source, since, until):
                for row in rows:
                    yield _clean(make(row))


def write(
    store: Store,
    out: Path,
    *,
    key: bytes,
    since: datetime | None = None,
    until: datetime | None = None,
    personal: bool = False,
) -> tuple[Path, dict[int, int]]:
    """Write `out/ocsf.jsonl`; its path and how many events of each class it holds."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ocsf.jsonl"
    counts: dict[int, int] = {}
    with path.open("wb") as handle:
        for item in events(store, Mapper(key, personal=personal), since, until):
            counts[item["class_uid"]] = counts.get(item["class_uid"], 0) + 1
            handle.write(orjson.dumps(item) + b"\n")
    return path, counts
