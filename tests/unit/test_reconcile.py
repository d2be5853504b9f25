"""Comparing what was written back with what the system of record holds."""

from __future__ import annotations

from closeloop.app.reconcile import differences
from closeloop.connectors.port import Effect


def done(key: str, operation: str, reference: str = "") -> dict[str, object]:
    return {"idempotency_key": key, "operation": operation, "status": "done",
            "result": {"reference": reference}}  # fmt: skip


def test_differences_by_key_or_by_reference() -> None:
    writebacks = [
        done("k1", "post_payment", "pay_1"),
        done("k2", "add_note"),
        done("k3", "clear_flag", "flag_9"),  # the core keeps no keys for flags: its reference
        {"idempotency_key": "k4", "operation": "retry_charge", "status": "failed", "result": {}},
    ]
    effects = [
        Effect(operation="post_payment", idempotency_key="k1", reference="pay_1"),
        Effect(operation="post_payment", idempotency_key="k1", reference="pay_2"),
        Effect(operation="clear_flag", idempotency_key="", reference="flag_9"),
    ]
    found = differences("c1", writebacks, effects)
    assert found.key == "reconcile:c1" and found.actor == "reconciler"
    assert found.duplicated == (
        {"operation": "post_payment", "idempotency_key": "k1", "times": 2,
         "references": ["pay_1", "pay_2"]},
    )  # fmt: skip
    assert found.missing == ({"operation": "add_note", "idempotency_key": "k2", "reference": ""},)
    assert differences("c1", writebacks[2:], effects[2:]) == differences("c1", [], [])
