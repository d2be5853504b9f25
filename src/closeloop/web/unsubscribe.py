"""One-click unsubscribe (RFC 8058) at ``/u/{token}``.

Mail clients POST ``List-Unsubscribe=One-Click`` to the URL of the message's
``List-Unsubscribe`` header, with no login and no cookie; that unsubscribes.
A GET (a person following the link, or a mail scanner prefetching it) only
shows what would be unsubscribed and a button that makes the same POST: it
never changes anything.
"""

from __future__ import annotations

from html import escape
from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse

from closeloop.app import App
from closeloop.errors import NotFound
from closeloop.web.auth import public_router

ONE_CLICK = "One-Click"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title></head>"
        '<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 2rem auto; '
        f'padding: 0 1rem; line-height: 1.5"><h1>{escape(title)}</h1>{body}</body></html>'
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def router(app: App) -> APIRouter:
    routes = public_router("the unsubscribe link's token (RFC 8058 one-click)")

    @routes.get("/u/{token}", response_class=HTMLResponse)
    def confirm(token: str) -> HTMLResponse:
        try:
            target = app.service.unsubscribe_target(token)
        except NotFound:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
        what = f"{escape(target['channel'])} messages to {escape(target['address'])}"
        return _page(
            "Unsubscribe",
            f"<p>Stop {what}?</p>"
            f'<form method="post" action="/u/{escape(token)}">'
            f'<input type="hidden" name="List-Unsubscribe" value="{ONE_CLICK}">'
            '<button type="submit">Unsubscribe</button></form>',
        )

    @routes.post("/u/{token}", response_class=HTMLResponse)
    def unsubscribe(
        token: str, one_click: Annotated[str | None, Form(alias="List-Unsubscribe")] = None
    ) -> HTMLResponse:
        if one_click != ONE_CLICK:
            return _page(
                "Not unsubscribed",
                "<p>The request must carry <code>List-Unsubscribe=One-Click</code> (RFC 8058).</p>",
                400,
            )
        try:
            target = app.service.unsubscribe(token)
        except NotFound:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
        what = f"{escape(target['channel'])} messages to {escape(target['address'])}"
        return _page("Unsubscribed", f"<p>You will get no more {what} from us.</p>")

    return routes
