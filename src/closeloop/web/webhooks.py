"""Provider webhooks: Twilio's status callbacks and inbound messages.

Every call must carry a valid ``X-Twilio-Signature`` computed over the URL
Twilio called (closeloop's public URL and the path) and the form parameters;
an unsigned or tampered call is answered 403 and recorded in
``webhook_rejections`` with what was wrong, and changes nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from closeloop.app import App
from closeloop.channels.twilio import signature_ok
from closeloop.web.auth import public_router

TWIML = "application/xml"


def _reject(app: App, path: str, remote: str, reason: str) -> None:
    with app.store.transaction() as tx:
        tx.reject_webhook(path, remote, reason, app.clock.now())


def router(app: App) -> APIRouter:
    routes = public_router("the provider's signature")

    async def verified(request: Request) -> dict[str, str] | None:
        form = {k: str(v) for k, v in (await request.form()).items()}
        token = app.settings.twilio_auth_token
        given = request.headers.get("X-Twilio-Signature")
        url = app.settings.public_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        reason = None
        if token is None:
            reason = "Twilio is not configured (CLOSELOOP_TWILIO_AUTH_TOKEN)"
        elif not given:
            reason = "no X-Twilio-Signature"
        elif not signature_ok(url, form, token.get_secret_value(), given):
            reason = "X-Twilio-Signature does not match"
        if reason is None:
            return form
        remote = request.client.host if request.client else "unknown"
        await run_in_threadpool(_reject, app, request.url.path, remote, reason)
        return None

    @routes.post("/webhooks/twilio/status")
    async def status(request: Request) -> Response:
        form = await verified(request)
        if form is None:
            return Response("signature required", status_code=403)
        await run_in_threadpool(  # database work stays off the event loop
            app.inbound.delivery_receipt,
            form.get("MessageSid", ""),
            form.get("MessageStatus", ""),
            form.get("ErrorCode") or None,
        )
        return Response(status_code=204)

    @routes.post("/webhooks/twilio/inbound")
    async def inbound(request: Request) -> Response:
        form = await verified(request)
        if form is None:
            return Response("signature required", status_code=403)
        answer = app.inbound.message(
            form.get("MessageSid", ""),
            form.get("From", ""),
            form.get("To", ""),
            form.get("Body", ""),
        )
        return Response(answer, media_type=TWIML)

    return routes
