"""Phased rollouts: cohort inclusion and arm assignment, the plan, its gates.

Inclusion uses Unleash's normalised hash, so a team's existing flag tooling
and closeloop put the same customer in the same bucket, and growing a stage
only ever adds cases. Arms inside the cohort use Unleash's variant hashing
(another seed, normalised by the sum of the weights), so which arm a
customer gets does not depend on whether, or when, they were included.
"""

from __future__ import annotations

from collections.abc import Sequence

import mmh3

VARIANT_SEED = 86028157  # Unleash's seed for variants (inclusion uses 0)


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


def arm(group_id: str, unit_id: str, arms: Sequence[tuple[str, int]]) -> str:
    """The unit's arm among (name, weight) pairs, as Unleash picks a variant: a target in
    1..sum(weights) from the variant hash, then the first arm whose running weight reaches it."""
    total = sum(weight for _, weight in arms)
    if total <= 0 or any(weight < 0 for _, weight in arms):
        raise ValueError("arm weights must be positive")
    target = mmh3.hash(f"{group_id}:{unit_id}", VARIANT_SEED, signed=False) % total + 1
    running = 0
    for name, weight in arms:
        running += weight
        if weight and running >= target:
            return name
    raise AssertionError("unreachable: the weights add up to the total")
