from __future__ import annotations

from datetime import UTC, datetime

from closeloop.contact import next_contact_time
from closeloop.ids import rng_for
from closeloop.rollout import bucket, in_cohort


def test_bucket_matches_unleash_normalised_hash() -> None:
    # The reference values of Unleash's client specification.
    assert bucket("gr1", "123") == 73
    assert bucket("groupX", "999") == 25


def test_growing_a_cohort_only_adds_units() -> None:
    units = [f"ACC-{i}" for i in range(2000)]
    small = {u for u in units if in_cohort("failed_payment", u, 5)}
    large = {u for u in units if in_cohort("failed_payment", u, 25)}
    assert small <= large
    assert 60 <= len(small) <= 140


def test_contact_window_in_local_time() -> None:
    late = datetime(2026, 7, 1, 5, 0, tzinfo=UTC)  # 22:00 in Los Angeles (PDT)
    assert next_contact_time(late, "America/Los_Angeles") == datetime(2026, 7, 1, 15, 0, tzinfo=UTC)
    noon = datetime(2026, 7, 1, 19, 0, tzinfo=UTC)
    assert next_contact_time(noon, "America/Los_Angeles") == noon


def test_randomness_is_drawn_per_subject() -> None:
    assert rng_for(7, "case_1", "step").random() == rng_for(7, "case_1", "step").random()
    assert rng_for(7, "case_1", "step").random() != rng_for(7, "case_2", "step").random()
