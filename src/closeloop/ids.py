"""Identifiers and seeded randomness.

Randomness is drawn per (seed, subject, step), never from one shared stream,
so a run that is killed and resumed draws exactly what an uninterrupted run
would have drawn.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from datetime import datetime


def new_id(prefix: str) -> str:
    """A random identifier such as ``case_3f9a...`` (128 bits)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def derived_id(prefix: str, *parts: str) -> str:
    """A stable identifier derived from its parts (same parts, same id)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def case_id(trigger_id: str, opened_at: datetime) -> str:
    """The id of the case a trigger opens: time-ordered, then derived.

    Laid out like a UUIDv7: the first 12 hex digits are the opening time in
    milliseconds, the last 20 a digest of the trigger id. Cases opened
    together sort together, so the rows and index entries a day's work touches
    share B-tree pages instead of landing on random ones (on the engine's
    write path that is a third of the page I/O). The same trigger at the same
    time gives the same id; intake finds a trigger's existing case by its id.
    """
    millis = int(opened_at.timestamp() * 1000)
    digest = hashlib.sha256(trigger_id.encode()).hexdigest()[:20]
    return f"case_{millis:012x}{digest}"


def idempotency_key(case_id: str, *parts: str) -> str:
    """A key derived from what an effect is (case, outcome, operation), never
    from time or attempt, so every retry of one effect carries the same key.

    It starts with the case id, so keys sort (and are stored) with their case
    and say in a log which case they belong to.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{case_id}.{digest}"


def short_digest(text: str, chars: int = 12) -> str:
    """A short stable digest of `text`, for references and tokens made from a key."""
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def rng_for(seed: int, *parts: str) -> random.Random:
    """A random source that depends only on the seed and the named subject/step."""
    material = "\x1f".join((str(seed), *parts)).encode()
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))
