"""Connectors: how outcomes reach the system of record.

The port reads an account and executes one writeback operation under an
idempotency key. Shipped: the REST connector (`rest`, driven by a YAML
mapping, `mapping`), the reference billing core it is tested against
(`reference_core`, an HTTP service), and the simulated ledger the demo uses
in-process (`ledger`). SQL, batch-file and plugin connectors plug in behind
the same port.
"""

from __future__ import annotations

from closeloop.connectors.ledger import LedgerCore
from closeloop.connectors.port import Account, Connector, WritebackResult

__all__ = ["Account", "Connector", "LedgerCore", "WritebackResult"]
