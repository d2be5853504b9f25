"""Cohort assignment for phased rollouts.

Inclusion uses Unleash's normalised hash, so a team's existing flag tooling
and closeloop put the same customer in the same bucket, and growing a stage
only ever adds cases.
"""

from __future__ import annotations

import mmh3


def bucket(group_id: str, unit_id: str) -> int:
    """The unit's bucket, 1..100, for this group (Unleash `normalizedValue`)."""
    return mmh3.hash(f"{group_id}:{unit_id}", 0, signed=False) % 100 + 1


def in_cohort(group_id: str, unit_id: str, percentage: float) -> bool:
    """True when the unit falls inside a cohort of `percentage` percent."""
    if percentage >= 100:
        return True
    if percentage <= 0:
        return False
    return bucket(group_id, unit_id) <= percentage
