"""Configuration, read once at the edge (``CLOSELOOP_*`` environment variables)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "failed_payment.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOSELOOP_", extra="ignore")

    data_dir: Path = Field(
        default=Path("closeloop-data"),
        description="where the SQLite file, keys and local providers live",
    )
    database_url: str | None = Field(
        default=None,
        description="sqlite:///PATH or postgresql://...; default: DATA_DIR/closeloop.db",
    )
    world_url: str | None = Field(
        default=None,
        description="database of the local sink provider and simulated system of record",
    )
    workflows: list[Path] = Field(
        default_factory=lambda: [EXAMPLE],
        description='resolution specs to load, as JSON: ["specs/a.yaml", "specs/b.yaml"]',
    )
    connector: Path | None = Field(
        default=None,
        description="a connector mapping (YAML): read accounts and write outcomes back through "
        "it; unset, the local simulated ledger",
    )
    public_url: str = "http://127.0.0.1:8000"
    link_lifetime_hours: int = Field(default=72, ge=1)
    link_failure_floor_seconds: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description="unknown, used and expired links all answer after at least this long",
    )
    cohort_percent: float = Field(default=100.0, ge=0, le=100)
    writeback_max_attempts: int = Field(default=6, ge=1)
    writeback_base_delay_seconds: float = Field(default=30.0, gt=0)
    writeback_max_delay_seconds: float = Field(default=3600.0, gt=0)
    writeback_deadline_hours: float = Field(
        default=24.0,
        gt=0,
        description="a writeback not confirmed by then fails and its case goes to an agent",
    )
    batch_size: int = Field(default=500, ge=1, le=10_000)
    smtp_host: str | None = Field(
        default=None, description="send email through this SMTP server (default: the local sink)"
    )
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = True
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ca_file: Path | None = Field(
        default=None, description="CA bundle to trust for STARTTLS (default: the system's)"
    )
    email_sender: str = "closeloop <no-reply@closeloop.invalid>"
    twilio_base_url: str = Field(
        default="https://api.twilio.com", description="Twilio's API, or the local sandbox"
    )
    twilio_account_sid: str | None = Field(
        default=None, description="send SMS and WhatsApp through Twilio (default: the local sink)"
    )
    twilio_auth_token: SecretStr | None = None
    twilio_sms_from: str | None = Field(default=None, description="our SMS number, E.164")
    twilio_whatsapp_from: str | None = Field(default=None, description="our WhatsApp number")
    webhook_url: str | None = Field(
        default=None, description="your messaging gateway: the signed webhook channel posts here"
    )
    webhook_secret: SecretStr | None = None
    send_concurrency: int = Field(
        default=1, ge=1, le=64, description="messages of a batch handed to providers at once"
    )
    sms_per_second: float | None = Field(
        default=None, gt=0, description="the SMS sender's rate limit at the provider"
    )
    whatsapp_per_second: float | None = Field(default=None, gt=0)
    email_per_second: float | None = Field(default=None, gt=0)
    program_name: str = "closeloop payments"
    program_help: str = "help at 1-800-555-0100 or https://closeloop.invalid/help"
    program_frequency: str = "Up to 3 msgs per week"
    brand_name: str | None = Field(
        default=None, max_length=80, description="the mini-apps' name (default: program_name)"
    )
    brand_color: str = Field(
        default="#0b5cab", pattern=r"^#[0-9a-fA-F]{6}$", description="the mini-apps' colour"
    )
    brand_logo_url: str | None = Field(
        default=None, pattern=r"^https://\S+$", description="an https URL of the logo"
    )
    card_fields_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+/?$",
        description="the payment provider's hosted card fields (origin), framed by the mini-app",
    )
    card_api_key: SecretStr | None = Field(
        default=None, description="the key closeloop asks the provider's token API with"
    )
    scan_command: str | None = Field(
        default=None,
        description="scans each uploaded document (its path appended; exit 0 clean, 1 infected)",
    )
    identity_key: SecretStr | None = Field(
        default=None,
        description="key (64 hex digits) for comparing known facts as keyed hashes; "
        "generated into DATA_DIR/keys on first run when unset",
    )
    consent_notice_version: str | None = Field(
        default=None,
        max_length=100,
        description="the version of the consent and opt-out notice text customers are shown; "
        "recorded with every consent change closeloop takes",
    )
    oidc_issuer: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="staff sign in through this OpenID Connect provider (its issuer URL)",
    )
    oidc_client_id: str | None = Field(default=None, description="closeloop's client at the IdP")
    oidc_client_secret: SecretStr | None = Field(default=None, description="its client secret")
    oidc_username_claim: str = Field(
        default="email",
        description="the ID token claim that is the closeloop username (closeloop users add)",
    )
    oidc_name: str = Field(default="single sign-on", description="the sign-in button's words")
    sms_segment_cost: Decimal = Field(
        default=Decimal("0.0083"), ge=0, description="what one SMS segment costs (reporting)"
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'closeloop.db'}"

    def resolved_world_url(self) -> str:
        return self.world_url or f"sqlite:///{self.data_dir / 'world.db'}"
