"""Check a trigger payload against the fields its workflow declares."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from closeloop.errors import TriggerError
from closeloop.spec.model import Spec


def _canonical(kind: str, value: Any) -> Any:
    """Return the JSON form a case stores, or raise ValueError saying what was expected."""
    if kind == "string":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a non-empty string")
        return value
    if kind == "decimal":
        if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
            raise ValueError("expected a decimal number such as 120.50")
        try:
            number = Decimal(str(value))
        except InvalidOperation as exc:
            raise ValueError("expected a decimal number such as 120.50") from exc
        if not number.is_finite():
            raise ValueError("expected a finite decimal number")
        return str(number)
    if kind == "integer":
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ValueError("expected a whole number") from exc
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise ValueError("expected true or false")
    if kind == "date":
        try:
            return date.fromisoformat(str(value)).isoformat()
        except ValueError as exc:
            raise ValueError("expected a date such as 2026-03-31") from exc
    if kind == "timestamp":
        try:
            return datetime.fromisoformat(str(value)).isoformat()
        except ValueError as exc:
            raise ValueError("expected a timestamp such as 2026-03-31T09:00:00Z") from exc
    if kind == "list":
        if isinstance(value, list):
            return [str(v) for v in value]
        if isinstance(value, str):
            return [v for v in value.split("|") if v]
        raise ValueError("expected a list")
    raise ValueError(f"unknown field type {kind}")


def parse_trigger_data(spec: Spec, data: Mapping[str, Any]) -> dict[str, Any]:
    """The declared fields of `data` in canonical form; TriggerError lists every bad field."""
    errors: list[dict[str, object]] = []
    out: dict[str, Any] = {}
    for name, kind in spec.trigger.fields.items():
        if name not in data or data[name] is None or data[name] == "":
            errors.append({"loc": ["data", name], "msg": f"required {kind} field is missing"})
            continue
        try:
            out[name] = _canonical(kind, data[name])
        except ValueError as exc:
            errors.append({"loc": ["data", name], "msg": str(exc), "input": repr(data[name])})
    for name in data:
        if name not in spec.trigger.fields:
            errors.append({"loc": ["data", name], "msg": f"not a field of {spec.trigger.event}"})
    if errors:
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)  # type: ignore[call-overload]
        raise TriggerError(f"trigger does not match {spec.key}: {summary}", field_errors=errors)
    return out


def typed(spec: Spec, data: Mapping[str, Any]) -> dict[str, Any]:
    """Stored case data with decimals and dates as Python values (for rules)."""
    out: dict[str, Any] = dict(data)
    for name, kind in spec.trigger.fields.items():
        if name not in out:
            continue
        if kind == "decimal":
            out[name] = Decimal(str(out[name]))
        elif kind == "date":
            out[name] = date.fromisoformat(str(out[name]))
        elif kind == "timestamp":
            out[name] = datetime.fromisoformat(str(out[name]))
    return out
