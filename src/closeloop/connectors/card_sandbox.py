"""A local stand-in for a payment provider's hosted card fields, on its own origin.

Card data never touches closeloop: the mini-app frames this page, the
customer types the card here, and this server keeps the card and hands back
a token. For development, the demo and tests; a real provider's hosted
fields take its place in production.

- ``GET /fields?return_to=URL&state=S`` the card form, framable only by the
  allowed origins (``frame-ancestors``);
- ``POST /tokenize`` checks the number (Luhn, 13 to 19 digits), the expiry
  and the security code, keeps them, and sends the browser's top window back
  to ``return_to`` (only to an allowed origin) with ``token`` and ``state``;
- ``GET /v1/tokens/{token}`` (HTTP basic auth with the API key) what
  closeloop may know of a card: brand, last four digits, expiry.
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from html import escape
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Form, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

card_metadata = sa.MetaData()
card_tokens = sa.Table(
    "card_tokens",
    card_metadata,
    sa.Column("token", sa.String(40), primary_key=True),
    sa.Column("brand", sa.String(16), nullable=False),
    sa.Column("last4", sa.String(4), nullable=False),
    sa.Column("expiry", sa.String(5), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

_BASIC = HTTPBasic(auto_error=False)
# Tokens in letters and digits, like real providers' (hex could hold a run of digits
# that passes as a card number).
_TOKEN_SYMBOLS = string.ascii_letters + string.digits


def luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "card"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class CardSandbox:
    def __init__(self, engine: sa.Engine, *, allowed_origins: list[str], api_key: str) -> None:
        card_metadata.create_all(engine)
        self.engine = engine
        self.allowed = {origin(o) for o in allowed_origins}
        self.api_key = api_key
        self.app = self._build()

    def _page(self, return_to: str, state: str, error: str = "", status: int = 200) -> HTMLResponse:
        alert = f'<p class="error" role="alert" id="err">{escape(error)}</p>' if error else ""
        invalid = ' aria-invalid="true" aria-describedby="err"' if error else ""
        html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Card details</title>
<style>body{{font:1rem/1.5 system-ui,sans-serif;margin:0;padding:.5rem}}label{{display:block;
font-weight:600;margin-top:.75rem}}input{{font:inherit;width:100%;box-sizing:border-box;
padding:.5rem;border:2px solid #5b6573;border-radius:.375rem}}button{{font:inherit;font-weight:600;
margin-top:1rem;min-height:2.75rem;padding:.5rem 1.25rem;border:0;border-radius:.375rem;
background:#1b1f24;color:#fff}}.error{{color:#b00020;font-weight:600}}.row{{display:flex;gap:.75rem}}
</style></head><body><main>{alert}
<form method="post" action="/tokenize" target="_top" novalidate>
<input type="hidden" name="return_to" value="{escape(return_to)}">
<input type="hidden" name="state" value="{escape(state)}">
<label for="number">Card number</label>
<input id="number" name="number" inputmode="numeric" autocomplete="cc-number"{invalid}>
<div class="row"><div><label for="expiry">Expiry (MM/YY)</label>
<input id="expiry" name="expiry" inputmode="numeric" autocomplete="cc-exp"></div>
<div><label for="cvc">Security code</label>
<input id="cvc" name="cvc" inputmode="numeric" autocomplete="cc-csc"></div></div>
<button type="submit">Save card</button></form></main></body></html>"""
        ancestors = " ".join(sorted(self.allowed)) or "'none'"
        headers = {
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'unsafe-inline'; form-action 'self' "
                f"{ancestors}; frame-ancestors {ancestors}; base-uri 'none'"
            ),
            "Referrer-Policy": "no-referrer",
        }
        return HTMLResponse(html, status_code=status, headers=headers)

    def _build(self) -> FastAPI:
        # Coroutines all: each does one short SQLite query, cheaper than a worker thread.
        app = FastAPI(title="closeloop card sandbox", docs_url=None, redoc_url=None)

        def allowed(return_to: str) -> None:
            if origin(return_to) not in self.allowed:
                raise HTTPException(400, "return_to is not an allowed origin")

        @app.get("/fields", response_class=HTMLResponse)
        async def fields(return_to: str, state: str) -> HTMLResponse:
            allowed(return_to)
            return self._page(return_to, state)

        @app.post("/tokenize", response_model=None)
        async def tokenize(
            return_to: Annotated[str, Form()],
            state: Annotated[str, Form()],
            number: Annotated[str, Form()] = "",
            expiry: Annotated[str, Form()] = "",
            cvc: Annotated[str, Form()] = "",
        ) -> HTMLResponse | RedirectResponse:
            allowed(return_to)
            digits = "".join(ch for ch in number if ch.isdigit())
            if not (13 <= len(digits) <= 19 and luhn(digits)):
                return self._page(return_to, state, "That card number is not valid.", 422)
            month, _, year = expiry.strip().partition("/")
            now = datetime.now(UTC)
            try:
                ends = (2000 + int(year), int(month))
            except ValueError:
                ends = (0, 0)
            if not (1 <= ends[1] <= 12) or ends < (now.year, now.month):
                return self._page(return_to, state, "That expiry date is not valid.", 422)
            if not (cvc.isdigit() and 3 <= len(cvc) <= 4):
                return self._page(return_to, state, "That security code is not valid.", 422)
            token = "tok_" + "".join(secrets.choice(_TOKEN_SYMBOLS) for _ in range(24))
            with self.engine.begin() as c:
                c.execute(
                    card_tokens.insert().values(
                        token=token,
                        brand=brand_of(digits),
                        last4=digits[-4:],
                        expiry=f"{ends[1]:02d}/{ends[0] % 100:02d}",
                        created_at=now.isoformat(),
                    )
                )
            query = urlencode({"token": token, "state": state})
            return RedirectResponse(f"{return_to}?{query}", status_code=303)

        async def key(credentials: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> None:
            if credentials is None or not secrets.compare_digest(
                credentials.username, self.api_key
            ):
                raise HTTPException(401, "an API key is needed")

        @app.get("/v1/tokens/{token}", dependencies=[Depends(key)])
        async def card(token: str) -> dict[str, Any]:
            with self.engine.connect() as c:
                row = c.execute(sa.select(card_tokens).where(card_tokens.c.token == token)).first()
            if row is None:
                raise HTTPException(404, "no such token")
            return {
                "token": row.token,
                "brand": row.brand,
                "last4": row.last4,
                "expiry": row.expiry,
            }

        return app
