"""SMS bodies: which encoding a body needs and how many segments it costs.

A body that fits the GSM 03.38 7-bit alphabet (with its extension table,
whose characters take two septets) goes as GSM-7: 160 septets in one
segment, 153 per segment when concatenated. Anything else goes as UCS-2
(UTF-16): 70 code units in one segment, 67 per segment when concatenated.
Carriers bill per segment, so the count is what cost telemetry uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# GSM 03.38 default alphabet (one septet each) and extension table (two septets each).
_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXTENDED = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True, kw_only=True)
class SmsParts:
    encoding: Literal["GSM-7", "UCS-2"]
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def measure(body: str) -> SmsParts:
    """The encoding, size and segment count of an SMS body."""
    if all(ch in _BASIC or ch in _EXTENDED for ch in body):
        sizes = [2 if ch in _EXTENDED else 1 for ch in body]
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in body]  # surrogate pairs
        single, multi, encoding = 70, 67, "UCS-2"
    units = sum(sizes)
    if units <= single:
        return SmsParts(encoding=encoding, units=units, segments=1)  # type: ignore[arg-type]
    # A character's units never straddle two segments (escape + char, surrogate pairs).
    segments, used = 1, 0
    for size in sizes:
        if used + size > multi:
            segments, used = segments + 1, 0
        used += size
    return SmsParts(encoding=encoding, units=units, segments=segments)  # type: ignore[arg-type]
