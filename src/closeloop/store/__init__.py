"""Storage: SQLAlchemy Core tables, Alembic migrations, the engine's queries."""

from __future__ import annotations

from closeloop.store.store import Applied, OutboxItem, Store, Tx

__all__ = ["Applied", "OutboxItem", "Store", "Tx"]
