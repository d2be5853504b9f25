"""Phone numbers: every SMS or WhatsApp address is valid E.164 before a send."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers


@lru_cache(maxsize=65_536)  # a customer's number is checked for each message
def e164_problem(address: str) -> str | None:
    """Why `address` is not a valid E.164 number, or None when it is."""
    if not address.startswith("+"):
        return f"{address!r} is not in E.164 form (+ and country code)"
    try:
        number = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException as exc:
        return f"{address!r} is not a phone number: {exc}"
    if not phonenumbers.is_valid_number(number):
        return f"{address!r} is not a valid number for its country"
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if formatted != address:
        return f"{address!r} is not in E.164 form (expected {formatted})"
    return None


def to_e164(text: str, region: str = "US") -> str | None:
    """A number as a person types it ("(212) 555-0123"), in E.164; None if it is not valid."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
