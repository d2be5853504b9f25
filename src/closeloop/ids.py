"""Identifiers and seeded randomness.

Randomness is drawn per (seed, subject, step), never from one shared stream,
so a run that is killed and resumed draws exactly what an uninterrupted run
would have drawn.
"""

from __future__ import annotations

import hashlib
import random
import secrets


def new_id(prefix: str) -> str:
    """A random identifier such as ``case_3f9a...`` (128 bits)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def derived_id(prefix: str, *parts: str) -> str:
    """A stable identifier derived from its parts (same parts, same id)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def idempotency_key(*parts: str) -> str:
    """A key derived from what an effect is (case, outcome, operation), never
    from time or attempt, so every retry of one effect carries the same key."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def rng_for(seed: int, *parts: str) -> random.Random:
    """A random source that depends only on the seed and the named subject/step."""
    material = "\x1f".join((str(seed), *parts)).encode()
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))
