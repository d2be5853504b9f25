"""Connectors: how outcomes reach the system of record.

The port reads an account and executes one writeback operation under an
idempotency key. This foundation ships the simulated ledger core used by the
demo and the tests; REST, SQL, batch-file and plugin connectors plug in
behind the same port.
"""

from __future__ import annotations

from closeloop.connectors.ledger import LedgerCore
from closeloop.connectors.port import Account, Connector, WritebackResult

__all__ = ["Account", "Connector", "LedgerCore", "WritebackResult"]
