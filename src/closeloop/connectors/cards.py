"""What closeloop may know of a card: the payment provider's answer for a token.

The card itself stays with the provider (its hosted fields, on its own
origin); closeloop holds a token and asks the provider for the brand, the
last four digits and the expiry, to show the customer before they confirm.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass(frozen=True, kw_only=True)
class CardOnFile:
    token: str
    brand: str
    last4: str
    expiry: str


class CardTokens:
    """The provider's token API (the card sandbox's, or a real provider's of the same shape)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 5.0) -> None:
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), auth=(api_key, ""), timeout=timeout
        )
        # A token names one card for good: the page that shows it and the form that
        # confirms it ask once between them.
        self._known: dict[str, CardOnFile] = {}

    def describe(self, token: str) -> CardOnFile | None:
        """The card behind `token`, or None when the provider does not know it."""
        if not token.startswith("tok_") or not token[4:].isalnum():
            return None
        known = self._known.get(token)
        if known is not None:
            return known
        try:
            response = self.client.get(f"/v1/tokens/{token}")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body = response.json()
        card = CardOnFile(
            token=token,
            brand=str(body.get("brand", "card")),
            last4=str(body.get("last4", "")),
            expiry=str(body.get("expiry", "")),
        )
        if len(self._known) >= 10_000:
            self._known.clear()
        self._known[token] = card
        return card

    def close(self) -> None:
        self.client.close()
