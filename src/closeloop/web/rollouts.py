"""The rollout controller over HTTP: a rollout's status, and the operator's decisions.

`GET /v1/rollouts/{name}` (viewer) answers what `closeloop rollout status
NAME --json` prints; `POST /v1/rollouts/{name}/promote|hold|halt|resume`
(operator) with `{"reason": ...}` takes the decision in the caller's name:
404 for an unknown rollout, 409 when the decision cannot be taken now (gates
not passed, halted, completed), with the reason.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from closeloop.app import App
from closeloop.app.staff import Principal
from closeloop.errors import InputError, NotFound, StateError
from closeloop.web.auth import require


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


def router(app: App) -> APIRouter:
    routes = APIRouter()

    def answer(call: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = call()
        except NotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except (StateError, InputError) as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return result

    viewer, operator = require("viewer", app.staff), require("operator", app.staff)

    @routes.get("/v1/rollouts/{name}", dependencies=[Depends(viewer)])
    def status(name: str) -> dict[str, Any]:
        return answer(lambda: app.rollouts.report(name))

    @routes.post("/v1/rollouts/{name}/{action}")
    def decide(
        name: str,
        action: Literal["promote", "hold", "halt", "resume"],
        body: Decision,
        caller: Principal = Depends(operator),
    ) -> dict[str, Any]:
        take = {
            "promote": app.rollouts.promote,
            "hold": app.rollouts.hold,
            "halt": app.rollouts.halt,
            "resume": app.rollouts.resume,
        }[action]

        def decided() -> dict[str, Any]:
            live = take(name, actor=caller.actor, reason=body.reason)
            return {"rollout": name, "decision": action, "state": live.state,
                    "stage": live.stage.name}  # fmt: skip

        return answer(decided)

    return routes
