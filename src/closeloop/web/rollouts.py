"""The rollout controller over HTTP: a rollout's status, and the operator's decisions.

`GET /v1/rollouts/{name}` answers what `closeloop rollout status NAME
--json` prints; `POST /v1/rollouts/{name}/promote|hold|halt|resume` with
`{"reason": ..., "actor": ...}` takes the decision: 404 for an unknown
rollout, 409 when the decision cannot be taken now (gates not passed,
halted, completed), with the reason.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from closeloop.app import App
from closeloop.errors import InputError, NotFound, StateError


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)
    actor: str = Field(min_length=1, max_length=120)


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

    @routes.get("/v1/rollouts/{name}")
    def status(name: str) -> dict[str, Any]:
        return answer(lambda: app.rollouts.report(name))

    @routes.post("/v1/rollouts/{name}/{action}")
    def decide(
        name: str, action: Literal["promote", "hold", "halt", "resume"], body: Decision
    ) -> dict[str, Any]:
        take = {
            "promote": app.rollouts.promote,
            "hold": app.rollouts.hold,
            "halt": app.rollouts.halt,
            "resume": app.rollouts.resume,
        }[action]

        def decided() -> dict[str, Any]:
            live = take(name, actor=body.actor, reason=body.reason)
            return {"rollout": name, "decision": action, "state": live.state,
                    "stage": live.stage.name}  # fmt: skip

        return answer(decided)

    return routes
