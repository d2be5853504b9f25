"""The public API: trigger intake and case lookup.

``POST /v1/triggers`` takes one trigger object, a list of them, or
``{"triggers": [...]}``. Intake is idempotent on each trigger's id. A batch is
checked whole before anything is written: one bad trigger answers 422 with
the path of every bad field, and nothing of that batch is stored.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from closeloop.app import App, TriggerIn
from closeloop.app.telemetry import CONTENT_TYPE
from closeloop.app.tracing import TracedRequests
from closeloop.errors import NotFound, TriggerError
from closeloop.web import console, miniapp, rollouts, unsubscribe, webhooks
from closeloop.web.auth import public, require
from closeloop.web.cards import CardNumberGuard


class TriggerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="the event's id in your system")
    type: str = Field(min_length=1, max_length=100, examples=["payment.failed"])
    data: dict[str, Any] = Field(default_factory=dict)


class TriggerBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    triggers: list[TriggerBody] = Field(min_length=1, max_length=1000)


def _parse(payload: Any) -> tuple[list[TriggerBody], bool]:
    """One trigger, a list, or {"triggers": [...]}; raise RequestValidationError with paths."""
    try:
        if isinstance(payload, list):
            return TriggerBatch.model_validate({"triggers": payload}).triggers, True
        if isinstance(payload, dict) and "triggers" in payload:
            return TriggerBatch.model_validate(payload).triggers, True
        return [TriggerBody.model_validate(payload)], False
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


def create_api(app: App) -> FastAPI:
    api = FastAPI(
        title="closeloop",
        version="0.1.0",
        description="Resolution-first customer outreach: trigger intake and cases.",
    )

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {
                "loc": list(e.get("loc", ())),
                "msg": e.get("msg", ""),
                "type": e.get("type", "invalid"),
            }
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content=jsonable_encoder({"detail": detail}))

    viewer, agent = require("viewer", app.staff), require("agent", app.staff)
    operator = require("operator", app.staff)
    console.handle_refusals(api)

    @api.get("/healthz", dependencies=[Depends(public("a load balancer's probe"))])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/metrics", include_in_schema=False, dependencies=[Depends(viewer)])
    def metrics() -> Response:
        """Prometheus metrics (see docs/operating.md#metrics)."""
        return Response(app.telemetry.exposition(), media_type=CONTENT_TYPE)

    @api.post(
        "/v1/triggers", status_code=200, response_model=None, dependencies=[Depends(operator)]
    )
    def post_triggers(payload: Any = Body(...)) -> dict[str, Any] | JSONResponse:
        triggers, batch = _parse(payload)
        items = [TriggerIn(id=t.id, type=t.type, data=t.data) for t in triggers]
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                app.runtime.validate(item)
            except TriggerError as exc:
                prefix = ["body", "triggers", index] if batch else ["body"]
                for field_error in exc.field_errors or [{"loc": [], "msg": str(exc)}]:
                    errors.append(
                        {
                            "loc": [*prefix, *field_error["loc"]],  # type: ignore[misc]
                            "msg": field_error["msg"],
                            "type": "trigger",
                        }
                    )
        if errors:
            raise RequestValidationError(errors)
        results = app.runtime.intake(items)
        body = [
            {
                "trigger_id": r.trigger_id,
                "case_id": r.case_id,
                "status": r.status,
                "created": r.created,
                "cases_closed": r.closed,
                **({"reason": r.reason} if r.reason else {}),
            }
            for r in results
        ]
        if not batch and results[0].status == "unavailable":
            # Nothing was taken: the sender sends the same trigger again later.
            return JSONResponse(body[0], status_code=503, headers={"Retry-After": "30"})
        return {"results": body} if batch else body[0]

    @api.get("/v1/cases/{case_id}", dependencies=[Depends(agent)])
    def get_case(case_id: str) -> dict[str, Any]:
        try:
            case = app.runtime.case(case_id)
        except NotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        with app.store.read() as tx:
            history = tx.history(case_id)
        encoded: dict[str, Any] = jsonable_encoder(
            {
                "id": case.id,
                "workflow": case.workflow,
                "trigger_id": case.trigger_id,
                "account_id": case.account_id,
                "status": case.status.value,
                "cohort": case.cohort,
                "opened_at": case.opened_at,
                "closed_at": case.closed_at,
                "reason": case.reason,
                "outcome": case.outcome,
                "history": [
                    {k: h[k] for k in ("seq", "kind", "actor", "at", "reason", "data")}
                    for h in history
                ],
            }
        )
        return encoded

    api.include_router(rollouts.router(app))
    api.include_router(console.router(app))
    api.include_router(unsubscribe.router(app))
    api.include_router(webhooks.router(app))
    api.include_router(miniapp.router(app))
    api.add_middleware(
        CardNumberGuard, flag=lambda where: app.telemetry.card_numbers.labels(where).inc()
    )
    if app.tracing.enabled:  # outermost: the span covers the card guard's refusals too
        api.add_middleware(TracedRequests, tracing=app.tracing)
    return api
