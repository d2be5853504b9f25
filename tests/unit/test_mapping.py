"""A mapping's field conversions and paths, as pure functions."""

from __future__ import annotations

from datetime import date

import pytest

from closeloop.connectors.mapping import FieldMap, build_body, convert, load_mapping, nest
from closeloop.errors import SpecError


def test_field_paths_nest_the_json_body() -> None:
    flat = {"payment.amount": "10.00", "payment.method.id": "pm_1", "reference": "k1"}
    assert nest(flat) == {
        "payment": {"amount": "10.00", "method": {"id": "pm_1"}},
        "reference": "k1",
    }
    with pytest.raises(ValueError, match="both a value and an object"):
        nest({"payment": "x", "payment.amount": "1"})


@pytest.mark.parametrize(
    ("value", "kind", "form", "expected"),
    [
        ("120.50", "cents", None, 12050),
        ("120.5", "decimal", None, "120.5"),
        ("3", "integer", None, 3),
        ("2026-03-05", "date", "%Y%m%d", "20260305"),
        ("2026-03-05T10:00:00+00:00", "date", None, "2026-03-05"),
        (date(2026, 3, 5), "date", "%d/%m/%Y", "05/03/2026"),
    ],
)
def test_conversions(value: object, kind: str, form: str | None, expected: object) -> None:
    assert convert(value, kind, form) == expected  # type: ignore[arg-type]


def test_what_a_conversion_refuses() -> None:
    with pytest.raises(ValueError, match="is not a date"):
        convert("next tuesday", "date")
    with pytest.raises(ValueError, match="is not a decimal amount"):
        convert("lots", "cents")
    field = FieldMap.model_validate({"from": "first_date", "type": "date", "format": "%Y%m%d"})
    assert build_body({"start": field}, {"first_date": "2026-04-01"}) == {"start": "20260401"}


def test_a_format_needs_a_date() -> None:
    text = (
        "connector: c\nversion: 1\nkind: rest\nbase_url: http://core\n"
        "auth: {type: api_key, env: CORE_KEY}\naccount: {method: GET, path: '/a/{account_id}'}\n"
        "operations:\n  add_note:\n    method: POST\n    path: /n\n"
        "    body: {when: {from: first_date, format: '%Y'}}\n    answer: {reference: id}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_mapping(text)
    assert "format goes with type: date" in caught.value.problems[0].message
    assert caught.value.problems[0].line == 11  # the body line
