"""SMS encoding and segment counts (what carriers bill)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from closeloop.channels.sms import measure


def test_gsm7_and_ucs2_boundaries() -> None:
    assert measure("a" * 160).__dict__ == {"encoding": "GSM-7", "units": 160, "segments": 1}
    assert measure("a" * 161).segments == 2
    assert measure("a" * 306).segments == 2 and measure("a" * 307).segments == 3
    assert measure("€" * 80).__dict__ == {"encoding": "GSM-7", "units": 160, "segments": 1}
    assert measure("Pago pendiente, señor: ¿listo?").encoding == "GSM-7"  # ñ ¿ are GSM-7
    assert measure("¿Está listo?").encoding == "UCS-2"  # á is not
    assert measure("Pago de 10 € ✓").encoding == "UCS-2"
    assert measure("ó" * 70).__dict__ == {"encoding": "UCS-2", "units": 70, "segments": 1}
    assert measure("ó" * 71).segments == 2
    assert measure("😀" * 35).__dict__ == {"encoding": "UCS-2", "units": 70, "segments": 1}


def test_an_escape_never_straddles_two_segments() -> None:
    # 152 septets, then a two-septet character: it goes whole into segment two.
    assert measure("a" * 152 + "€" + "a" * 10).segments == 2
    assert measure("a" * 152 + "€" * 77).segments == 3  # 153 used by '€' pairs: 76 per segment


@given(st.text(alphabet=st.sampled_from("ab€ó😀 "), max_size=400))
def test_segments_hold_every_unit(body: str) -> None:
    parts = measure(body)
    per = (
        (160 if parts.encoding == "GSM-7" else 70)
        if parts.segments == 1
        else (153 if parts.encoding == "GSM-7" else 67)
    )
    assert parts.units <= parts.segments * per
    assert parts.segments == 1 or parts.units > (160 if parts.encoding == "GSM-7" else 70)


def test_pace_is_a_token_bucket() -> None:
    import pytest

    from closeloop.app.pacing import Pace

    now = [0.0]
    pace = Pace(2, clock=lambda: now[0])
    assert [pace.take(), pace.take()] == [0.0, 0.0]
    assert pace.take() == 0.5  # the next token comes in half a second
    now[0] = 0.5
    assert pace.take() == 0.0
    now[0] = 10.0  # idle time does not pile up more than a second's worth
    assert [pace.take(), pace.take(), pace.take()] == [0.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="more than 0"):
        Pace(0)
