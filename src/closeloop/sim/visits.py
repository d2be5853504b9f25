"""Simulated customers in the mini-app: each visit goes through its HTTP endpoints.

A visit is what a customer's phone does: open the link's page, press
Continue, answer the known facts, choose an option and finish it, reading a
one-time code from the messages on their device when the payment asks for
one, and typing a card into the payment provider's form (the card sandbox,
over real HTTP) when they pay with a new card or replace theirs. The web app
runs in this process (ASGI, no socket), so the demo exercises the same
routes, sessions, CSRF checks and pages a browser does, at the simulator's
speed.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from closeloop.app.service import CODE_MARK
from closeloop.channels.sink import sink_messages
from closeloop.ids import rng_for
from closeloop.sim.portfolio import customer

# A Visa test number (Luhn-valid): it only ever goes to the card sandbox.
TEST_CARD = {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123"}


class Visitor:
    """A customer's browser on the mini-app (in-process) and on the card provider (HTTP)."""

    def __init__(self, web: Any, public_url: str, world: sa.Engine) -> None:
        self.public = public_url.rstrip("/")
        self.world = world  # the sink: the customers' devices, where codes arrive
        # The app is called on this thread's event loop: no socket, no thread in between
        # (a route written as a plain function still runs on a worker thread, as in uvicorn).
        self._loop = asyncio.Runner()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=web), base_url=self.public, follow_redirects=False
        )
        self.provider = httpx.Client(timeout=10, follow_redirects=False)

    def close(self) -> None:
        self._loop.run(self.client.aclose())
        self._loop.close()
        self.provider.close()

    # -- HTTP -----------------------------------------------------------------
    async def _get(self, path: str) -> httpx.Response:
        return await self.client.get(path)

    async def _post(self, path: str, data: Mapping[str, str]) -> httpx.Response:
        return await self.client.post(path, data=dict(data))

    async def _page(self) -> str:
        return (await self._get("/m")).text

    # -- a visit ------------------------------------------------------------------
    def visit(
        self, seed: int, payload: Mapping[str, Any], secrets: Mapping[str, str], case_id: str
    ) -> str:
        """One visit to the mini-app from a message's link; returns what happened."""
        return self._loop.run(self._visit(seed, payload, secrets, case_id))

    async def _visit(
        self, seed: int, payload: Mapping[str, Any], secrets: Mapping[str, str], case_id: str
    ) -> str:
        key = str(payload["key"])
        person = customer(seed, int(payload["account_index"]))
        rng = rng_for(seed, "session", key)
        self.client.cookies.clear()  # a visit starts with whatever the link gives
        link = f"/m/{payload['token']}"
        await self._get(link)  # the page behind the link: it changes nothing
        opened = await self._post(link, {})
        if opened.status_code == 404:
            return "link: not valid"
        if opened.status_code != 303:
            return "refused: the case is closed"
        page = await self._page()
        if rng.random() < 0.1:
            return "abandoned"
        if 'action="/m/identity"' not in page:
            return "refused: no identity page"
        for _ in range(3):
            knows = rng.random() < person.knows_facts
            answers = dict(secrets) if knows else {**secrets, "date_of_birth": "1900-01-01"}
            answers = {k: v for k, v in answers.items() if f'name="{k}"' in page}
            answer = await self._post("/m/identity", {**answers, "csrf": _value(page, "csrf")})
            if answer.status_code == 303:
                break
            if answer.status_code == 503:  # the details could not be checked now
                return "unavailable"
            if answer.status_code != 422:  # locked: the case went to an agent
                return "identity_failed"
            page = answer.text
            if rng.random() < 0.3:
                return "gave_up_identity"
        else:
            return "identity_failed"
        page = await self._page()
        form = {"csrf": _value(page, "csrf"), "nonce": _value(page, "nonce")}
        choice = rng.random()
        if choice < 0.03:
            answer = await self._post(
                "/m/dispute", {**form, "reason": "I do not recognise this charge"}
            )
            return "disputed" if answer.status_code == 200 else f"refused: {answer.status_code}"
        if choice < 0.45:
            return await self._new_card(page)
        if choice < 0.53:
            return await self._arrangement(page, form, rng, case_id)
        return await self._pay(page, form, rng, case_id)

    async def _new_card(self, page: str) -> str:
        """Replace the card: typed into the provider's form, confirmed in the mini-app."""
        frame = _FRAME.search(page)
        if frame is None:
            return "no_offer"
        card = await self._typed_card(frame)
        if isinstance(card, str):
            return card
        fields = {k: _value(card.text, k) for k in ("csrf", "nonce", "token")}
        done = await self._post("/m/card", fields)
        return "card_updated" if done.status_code == 303 else f"refused: {done.status_code}"

    async def _typed_card(self, frame: re.Match[str]) -> httpx.Response | str:
        """The card typed into the provider's frame; the mini-app's page showing it, or why not."""
        returned = self._card_form(html.unescape(frame.group(1)))
        if returned is None:
            return "card_refused"
        shown = await self._get(returned)
        return shown if shown.status_code == 200 else f"refused: {shown.status_code}"

    def _card_form(self, fields_url: str) -> str | None:
        """Type the test card into the provider's form; the mini-app path it sends us back to."""
        form = self.provider.get(fields_url)
        if form.status_code != 200:
            return None
        parts = urlsplit(fields_url)
        hidden = {k: _value(form.text, k) for k in ("return_to", "state")}
        answer = self.provider.post(
            f"{parts.scheme}://{parts.netloc}/tokenize", data={**hidden, **TEST_CARD}
        )
        back = str(answer.headers.get("location", ""))
        if answer.status_code != 303 or not back.startswith(self.public):
            return None
        return back.removeprefix(self.public)

    async def _arrangement(self, page: str, form: dict[str, str], rng: Any, case_id: str) -> str:
        """A payment plan: the fewest instalments offered, monthly if offered, starting today."""
        counts = re.findall(r'name="instalments" value="(\d+)"', page)
        frequencies = re.findall(r'<option value="([a-z]+)">', page)
        first = re.search(r'name="first_date"[^>]* min="([0-9-]+)"', page)
        if not counts or not frequencies or first is None:
            return "no_offer"
        plan = {
            **form,
            "option": "arrangement",
            "instalments": counts[0],
            "frequency": "monthly" if "monthly" in frequencies else frequencies[0],
            "first_date": first.group(1),
        }
        review = await self._post("/m/plan", plan)
        if review.status_code != 200:
            return f"refused: {review.status_code}"
        agreed = await self._coded(
            await self._post("/m/submit", _hidden(review.text)), rng, case_id
        )
        if isinstance(agreed, str):
            return agreed
        return "arranged" if agreed.status_code == 303 else f"refused: {agreed.status_code}"

    async def _pay(self, page: str, form: dict[str, str], rng: Any, case_id: str) -> str:
        """Pay now: the full amount or part of it, with a method on file or a new card."""
        offered = re.search(r'id="amount" name="amount"[^>]* value="([0-9.]+)"', page)
        bounds = re.search(r"from \$([0-9,.]+) to \$([0-9,.]+)", page)
        methods = re.findall(r'name="method" value="([^"]+)"', page)
        if offered is None or not methods:
            return "no_offer"
        amount = Decimal(offered.group(1))
        if bounds is not None and rng.random() < 0.3:
            low = Decimal(bounds.group(1).replace(",", ""))
            amount = (low + (amount - low) * Decimal(str(rng.random()))).quantize(
                Decimal("0.01"), rounding=ROUND_DOWN
            )
        fields = {**form, "option": "pay_now", "amount": str(amount), "method": methods[0]}
        answer = await self._post("/m/submit", fields)
        frame = _FRAME.search(answer.text) if answer.status_code == 200 else None
        if frame is not None:  # a new card: the provider's form, then the mini-app's confirmation
            confirm = await self._typed_card(frame)
            if isinstance(confirm, str):
                return confirm
            answer = await self._post("/m/submit", _hidden(confirm.text))
        final = await self._coded(answer, rng, case_id)
        if isinstance(final, str):
            return final
        if final.status_code != 303:
            return f"refused: {final.status_code}"
        done = await self._page()
        return "paid" if "CL-" in done else "refused: no confirmation"

    async def _coded(self, answer: httpx.Response, rng: Any, case_id: str) -> httpx.Response | str:
        """Past the one-time code page, if the submission led to one (or how the visit ended)."""
        if answer.status_code != 200 or 'action="/m/code"' not in answer.text:
            return answer
        if rng.random() >= 0.85:  # never looked at the text message
            return "gave_up_code"
        code = self._code(case_id)
        if code is None:
            return "no_code"
        return await self._post("/m/code", {**_hidden(answer.text), "code": code})

    def _code(self, case_id: str) -> str | None:
        """The newest one-time code on the customer's phone or in their inbox."""
        stmt = (
            sa.select(sink_messages.c.body)
            .where(sink_messages.c.case_id == case_id)
            .where(
                sink_messages.c.idempotency_key.startswith(f"{case_id}{CODE_MARK}", autoescape=True)
            )
            .order_by(sink_messages.c.seq.desc())
            .limit(1)
        )
        with self.world.connect() as c:
            body = c.execute(stmt).scalar_one_or_none()
        found = re.search(r"\b(\d{6})\b", body or "")
        return found.group(1) if found else None


_FRAME = re.compile(r'<iframe class="card-fields" src="([^"]+)"')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def _hidden(page: str) -> dict[str, str]:
    """The hidden fields of a page's (first) form: what its button sends back."""
    return {k: html.unescape(v) for k, v in reversed(_HIDDEN.findall(page))}


def _value(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    return html.unescape(found.group(1)) if found else ""
