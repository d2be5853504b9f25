"""Tables, mapped from outside the domain (SQLAlchemy Core).

Indexes are shaped for the engine's hot queries: due timers by due time,
pending outbox rows by kind and next attempt, open cases by account.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; timestamptz on PostgreSQL, naive UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("closeloop stores only timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

metadata = sa.MetaData()

workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("workflow", sa.String(100), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("loaded_at", UTCDateTime, nullable=False),
)

cases = sa.Table(
    "cases",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("trigger_id", sa.String(200), nullable=False, unique=True),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("cohort", sa.String(64), nullable=False),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state", JSONType, nullable=False),
    sa.Index("ix_cases_account", "account_id", "status"),
    sa.Index("ix_cases_status", "status"),
)

case_events = sa.Table(
    "case_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("dedupe_key", sa.String(200)),
    sa.UniqueConstraint("case_id", "seq", name="uq_case_events_seq"),
    sa.UniqueConstraint("case_id", "dedupe_key", name="uq_case_events_dedupe"),
)

timers = sa.Table(
    "timers",
    metadata,
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Index("ix_timers_due", "due_at"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
    sa.Column("payload", JSONType, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("leased_until", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("result", JSONType),
    sa.Index("ix_outbox_due", "kind", "status", "next_attempt_at"),
    sa.Index("ix_outbox_updated", "kind", "updated_at"),  # writebacks finished lately
    sa.Index("ix_outbox_case", "case_id", "kind"),  # a case's writebacks
    sa.Index(
        "ix_outbox_leased",
        "leased_until",
        sqlite_where=sa.text("leased_until IS NOT NULL"),
        postgresql_where=sa.text("leased_until IS NOT NULL"),
    ),
)

exceptions = sa.Table(
    "exceptions",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open, closed
    sa.Column("claimed_by", sa.String(120)),  # the agent working it (migration 0009)
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("closed_by", sa.String(120)),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("action", sa.String(32)),  # what closed it: retried, resolved, new_link, ...
    sa.Index("ix_exceptions_queue", "queue", "status", "due_at"),
    sa.Index("ix_exceptions_case", "case_id"),
)

links = sa.Table(
    "links",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
    sa.Index("ix_links_case", "case_id"),
)

connector_log = sa.Table(  # a connector's breaker opening or closing, with why
    "connector_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(64), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)

rollouts = sa.Table(  # a rollout the controller runs: its plan, stage and state
    "rollouts",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("workflow", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # running | held | halted | completed
    sa.Column("stage_started_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_rollouts_workflow", "workflow", "state"),
)

rollout_decisions = sa.Table(  # start, promote, hold, halt, resume: who, why, on what data
    "rollout_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rollout", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(120), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("data", JSONType, nullable=False),
    sa.Index("ix_rollout_decisions_rollout", "rollout", "id"),
)

miniapp_sessions = sa.Table(
    "miniapp_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # the cookie's value, hashed
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("level", sa.String(32), nullable=False),  # identity: none, known_facts, ...
    sa.Column("created_at", UTCDateTime, nullable=False),  # of the first session of the visit
    sa.Column("seen_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Index("ix_miniapp_sessions_case", "case_id"),
)

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # also the stored file's name
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(8), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending_scan, clean, infected
    sa.Column("stored_at", UTCDateTime, nullable=False),
    sa.Column("scanned_at", UTCDateTime),
    sa.Index("ix_documents_case", "case_id"),
)

one_time_codes = sa.Table(
    "one_time_codes",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("code_hash", sa.String(64), nullable=False),  # keyed: HMAC-SHA256
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
    sa.Index("ix_one_time_codes_case", "case_id", "created_at"),
)

backend_events = sa.Table(
    "backend_events",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("cases_closed", sa.Integer, nullable=False),
)

# -- contact policy (migration 0002) ------------------------------------------
consents = sa.Table(
    "consents",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("granted", sa.Boolean, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("method", sa.String(100), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("notice_version", sa.String(100)),
    sa.Column("account_id", sa.String(200)),
    sa.Index("ix_consents_address", "channel", "address", "at"),
)

contact_log = sa.Table(
    "contact_log",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=False),
    sa.Index("ix_contact_log_account", "account_id", "sent_at"),
)

unsubscribe_tokens = sa.Table(
    "unsubscribe_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
)

# -- provider webhooks (migration 0003) ----------------------------------------
inbound_messages = sa.Table(
    "inbound_messages",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("provider_id", sa.String(64), nullable=False, unique=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),  # the customer's
    sa.Column("to_address", sa.String(320), nullable=False),  # ours
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("keyword", sa.String(16)),  # stop, help, start, or none
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Index("ix_inbound_address", "channel", "address", "received_at"),
)

webhook_rejections = sa.Table(
    "webhook_rejections",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("path", sa.String(200), nullable=False),
    sa.Column("remote", sa.String(100), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

delivery_receipts = sa.Table(
    "delivery_receipts",
    metadata,
    sa.Column("provider_id", sa.String(64), primary_key=True),
    sa.Column("outbox_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(16)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# -- staff: people and machines who run closeloop (migration 0009) -------------
staff_users = sa.Table(
    "staff_users",
    metadata,
    sa.Column("username", sa.String(120), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # viewer, agent, operator, admin
    sa.Column("password_hash", sa.String(200)),  # Argon2id; none for single sign-on only
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime),
    sa.Column("failed_sign_ins", sa.Integer, nullable=False, server_default="0"),
    sa.Column("locked_until", UTCDateTime),
)

staff_sessions = sa.Table(
    "staff_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # the cookie's value, hashed
    sa.Column("username", sa.String(120), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),  # password, oidc
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("seen_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Index("ix_staff_sessions_user", "username"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the token's public half
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),  # SHA-256 of the secret half
    sa.Column("created_by", sa.String(120), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("last_used_at", UTCDateTime),
)

staff_audit = sa.Table(  # sign-ins, refusals, user and token changes: what OCSF exports read
    "staff_audit",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(120), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # success, failure
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("remote", sa.String(100), nullable=False),
    sa.Index("ix_staff_audit_at", "at"),
)
