"""The REST connector: closeloop's operations as HTTP requests, by a mapping.

Each write carries the writeback's idempotency key (``Idempotency-Key``);
for a core that cannot honour keys the connector first reads the effect by
its reference (the key) and never writes twice. An answer counts as success
only when it is JSON and holds the reference where the mapping says:
anything else (a broken or truncated body, a renamed field) is an error a
retry may fix, never an effect taken on trust. Timeouts, dropped
connections, 408, 409, 425, 429 and 5xx may be retried (with the core's
``Retry-After``); other 4xx answers may not.
"""

from __future__ import annotations

from typing import Any

import httpx

from closeloop.connectors.credentials import CredentialsRefused, client_auth, tls_context
from closeloop.connectors.mapping import (
    RestMapping,
    RestOperation,
    at_path,
    build_body,
    mismatches,
    nest,
    render_path,
)
from closeloop.connectors.port import Account, Effect, WritebackResult
from closeloop.errors import OperationalError

_RETRYABLE = frozenset({408, 409, 425, 429})


class RestConnector:
    def __init__(
        self,
        mapping: RestMapping,
        *,
        transport: httpx.BaseTransport | None = None,
        secret: str | None = None,
    ) -> None:
        # Credentials come from the environment variables the mapping names, unless the
        # caller holds the secret (a drill's reference core has a key for its run only).
        headers, auth = client_auth(mapping, secret)
        self.mapping = mapping
        timeouts = mapping.timeouts
        self.client = httpx.Client(
            base_url=mapping.base_url.rstrip("/"),
            headers=headers,
            auth=auth,
            verify=tls_context(mapping.tls, mapping.connector),
            timeout=httpx.Timeout(
                timeouts.read.total_seconds(), connect=timeouts.connect.total_seconds()
            ),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    # -- the port -------------------------------------------------------------------
    def read_account(self, account_id: str) -> Account | None:
        try:
            answer = self._send(self.mapping.account, {"account_id": account_id}, None)
        except httpx.HTTPError as exc:
            raise OperationalError(f"connector {self.mapping.connector}: {exc}") from exc
        if answer.status_code == 404:
            return None
        record = _json(answer)
        if answer.status_code != 200 or not isinstance(record, dict):
            raise OperationalError(
                f"connector {self.mapping.connector}: reading account {account_id} "
                f"answered {answer.status_code}"
            )
        where = self.mapping.account_fields
        return Account(
            account_id=account_id,
            first_name=str(at_path(record, where.first_name) or ""),
            locale=str(at_path(record, where.locale) or "en"),
            time_zone=at_path(record, where.time_zone),
            facts=dict(at_path(record, where.facts) or {}),
            contacts=tuple(at_path(record, where.contacts) or ()),
            payment_methods=tuple(at_path(record, where.payment_methods) or ()),
            secrets=dict(at_path(record, where.secrets) or {}),
        )

    def execute(
        self, operation: str, argument: str | None, data: Any, idempotency_key: str
    ) -> WritebackResult:
        request = self.mapping.operations.get(operation)  # type: ignore[call-overload]
        if request is None:
            return WritebackResult(
                ok=False, error=f"connector {self.mapping.connector} has no {operation}"
            )
        values = {**data, "argument": argument, "idempotency_key": idempotency_key}
        if not self.mapping.honours_idempotency_keys:
            found = self._find(values)
            if found is not None:
                return found
        try:
            answer = self._send(request, values, idempotency_key)
        except (KeyError, ValueError) as exc:
            return WritebackResult(ok=False, error=f"cannot build {operation}: {exc}")
        except httpx.TimeoutException:
            return WritebackResult(ok=False, retryable=True, error="timeout")
        except CredentialsRefused as exc:  # rotate the secret: the writebacks wait meanwhile
            return WritebackResult(
                ok=False, retryable=True, error=f"closeloop's credentials were refused: {exc}"
            )
        except httpx.HTTPError as exc:
            return WritebackResult(ok=False, retryable=True, error=f"connection: {exc}")
        return self._result(request, answer)

    @property
    def reconciles(self) -> bool:
        return self.mapping.effects is not None

    def effects(self, case_id: str, account_id: str) -> list[Effect]:
        """What the core holds for the case, by the mapping's `effects` query."""
        query = self.mapping.effects
        if query is None:
            raise OperationalError(f"connector {self.mapping.connector} has no effects query")
        path = render_path(query.path, {"case_id": case_id, "account_id": account_id})
        try:
            answer = self.client.request(query.method, path)
        except httpx.HTTPError as exc:
            raise OperationalError(f"connector {self.mapping.connector}: {exc}") from exc
        items = at_path(_json(answer), query.items) if answer.status_code == 200 else None
        if not isinstance(items, list):
            raise OperationalError(
                f"connector {self.mapping.connector}: the effects of case {case_id} answered "
                f"{answer.status_code} without a list at {query.items}"
            )
        where = query.fields
        return [
            Effect(
                operation=str(at_path(item, where.operation) or ""),
                idempotency_key=str(at_path(item, where.idempotency_key) or ""),
                reference=str(at_path(item, where.reference) or ""),
            )
            for item in items
        ]

    # -- helpers --------------------------------------------------------------------
    def _send(
        self, request: RestOperation, values: dict[str, Any], key: str | None
    ) -> httpx.Response:
        path = render_path(request.path, values)
        body = nest(build_body(request.body, values))
        headers = {"Idempotency-Key": key} if key and self.mapping.honours_idempotency_keys else {}
        return self.client.request(
            request.method, path, json=body if request.body else None, headers=headers
        )

    def _result(self, request: RestOperation, answer: httpx.Response) -> WritebackResult:
        status = answer.status_code
        wait = _retry_after(answer)
        if 200 <= status < 300:
            body = _json(answer)
            if body is None:
                return WritebackResult(ok=False, retryable=True, error="malformed answer: not JSON")
            assert request.answer is not None  # the mapping requires one per operation
            problems = mismatches(body, request.answer)
            if problems:  # never taken as success; the retry replays the core's stored answer
                return WritebackResult(
                    ok=False,
                    retryable=True,
                    error=f"the answer does not match the mapping: {'; '.join(problems)}",
                )
            return WritebackResult(ok=True, reference=str(at_path(body, request.answer.reference)))
        reason = _reason(answer)
        if status in _RETRYABLE or status >= 500:
            return WritebackResult(ok=False, retryable=True, error=reason, retry_after=wait)
        return WritebackResult(ok=False, error=reason)

    def _find(self, values: dict[str, Any]) -> WritebackResult | None:
        """The effect already made under this key, read before writing (or None)."""
        finder = self.mapping.find_effect
        assert finder is not None  # the mapping requires it for such a core
        try:
            answer = self._send(finder, values, None)
        except (httpx.HTTPError, KeyError, ValueError):
            return None  # the write's own answer will say what is wrong
        found = at_path(_json(answer), finder.answer.reference) if finder.answer else None
        return WritebackResult(ok=True, reference=str(found)) if found else None


def _json(answer: httpx.Response) -> Any:
    try:
        return answer.json()
    except ValueError:
        return None


def _reason(answer: httpx.Response) -> str:
    body = _json(answer)
    message = body.get("error") if isinstance(body, dict) else None
    return f"{answer.status_code} {message or answer.reason_phrase}"


def _retry_after(answer: httpx.Response) -> float | None:
    value = answer.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
