"""Reconciliation: what the system of record holds, against what was written back.

A writeback is believed done on the core's answer. A core that loses an
effect, or applies one twice (a retry after a timeout meeting a release that
ignores idempotency keys), says so only when asked. Once all of a case's
writebacks have finished and settled, the reconciler asks the connector for
the effects the core holds for the case and records what differs:
`writeback_duplicated` (an effect applied more than once; a rollout's
`duplicate_writebacks` guardrail counts these) and `writeback_missing` (done
here, absent there). Every case is reconciled once, as `reconciled` in its
history. A connector that cannot list effects (`Reconcilable`) is not asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from closeloop.app.runtime import Runtime
from closeloop.clock import Clock
from closeloop.connectors import Connector
from closeloop.connectors.port import Effect, Reconcilable
from closeloop.engine import Reconciled
from closeloop.store import Store

log = structlog.get_logger("closeloop.reconcile")
SETTLE = timedelta(minutes=15)  # a writeback's last answer must be this old before a check
EVERY = timedelta(hours=1)  # how often a worker looks for cases to reconcile


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        connector: Connector,
        clock: Clock,
        *,
        settle: timedelta = SETTLE,
        every: timedelta = EVERY,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.connector = connector
        self.clock = clock
        self.settle = settle
        self.every = every
        self._last: datetime | None = None
        # Cases whose last writeback finished before this were all looked at (a process
        # starts with none: its first round reads the whole outbox once).
        self._since: datetime | None = None
        self.enabled = isinstance(connector, Reconcilable) and connector.reconciles

    def run(self, limit: int = 500, *, force: bool = False) -> int:
        """Reconcile the cases whose writebacks have settled; how many were reconciled."""
        now = self.clock.now()
        if not self.enabled or (
            not force and self._last is not None and now - self._last < self.every
        ):
            return 0
        self._last = now
        assert isinstance(self.connector, Reconcilable)
        cutoff = now - self.settle
        with self.store.read() as tx:
            settled = tx.cases_to_reconcile(cutoff, limit, since=self._since)
            due = [(case_id, account_id, tx.writebacks(case_id)) for case_id, account_id in settled]
        done = 0
        for case_id, account_id, writebacks in due:
            try:
                effects = self.connector.effects(case_id, account_id)
            except Exception as exc:  # the core cannot answer now: the next round asks again
                log.warning("reconcile.unavailable", case_id=case_id, error=str(exc))
                return done
            self.runtime.apply(case_id, differences(case_id, writebacks, effects))
            done += 1
        if len(settled) < limit:  # the window is done; a full batch leaves the rest of it
            self._since = cutoff
        return done


def differences(
    case_id: str, writebacks: Sequence[Mapping[str, Any]], effects: Sequence[Effect]
) -> Reconciled:
    """Compare a case's finished writebacks with the effects its system of record holds."""
    by_key: dict[str, list[Effect]] = {}
    for effect in effects:
        by_key.setdefault(effect.idempotency_key, []).append(effect)
    references = {e.reference for e in effects if e.reference}
    duplicated, missing = [], []
    for w in writebacks:
        if w["status"] != "done":
            continue
        key, reference = w["idempotency_key"], (w.get("result") or {}).get("reference", "")
        held = by_key.get(key, [])
        if len(held) > 1:
            duplicated.append(
                {
                    "operation": w["operation"],
                    "idempotency_key": key,
                    "times": len(held),
                    "references": [e.reference for e in held],
                }
            )
        elif not held and not (reference and reference in references):
            missing.append({"operation": w["operation"], "idempotency_key": key,
                            "reference": reference})  # fmt: skip
    return Reconciled(
        duplicated=tuple(duplicated),
        missing=tuple(missing),
        actor="reconciler",
        key=f"reconcile:{case_id}",
    )
