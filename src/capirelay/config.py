"""One typed settings object from ``capirelay.toml`` plus ``CAPIRELAY_...`` environment.

Precedence, highest first: keyword arguments, environment variables
(``CAPIRELAY_`` prefix, ``__`` between nesting levels, e.g.
``CAPIRELAY_DELIVERY__BATCH_SIZE=500`` or
``CAPIRELAY_PIXELS__1234567890__TEST_EVENT_CODE=TEST123``), the TOML file,
defaults.  The file is ``./capirelay.toml`` unless ``CAPIRELAY_CONFIG``
names another.

Secrets (access tokens, ingest keys, webhook secrets, app secrets) never need
to live in the file: each is a :class:`Secret` read from an environment
variable or a file *at use time*, so a rotated token is picked up without a
restart.  A literal value in the file works but is warned about.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

log = logging.getLogger("capirelay.config")

DEFAULT_API_VERSION = "v26.0"
_PIXEL_ID = re.compile(r"^[0-9]{1,32}$")


class ConfigError(ValueError):
    """The configuration cannot work; the message names the setting and the fix."""


class Secret(BaseModel):
    """Where a secret comes from: ``env`` (a variable), ``file`` (a path) or a literal ``value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: Path | None = None
    value: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        given = [s for s in (self.env, self.file, self.value) if s]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file or value")
        return self

    @property
    def is_literal(self) -> bool:
        return self.value is not None

    def describe(self) -> str:
        if self.env:
            return f"environment variable {self.env}"
        if self.file:
            return f"file {self.file}"
        return "literal value in the config file"

    def resolve(self) -> str | None:
        """Read the secret now; ``None`` when the variable/file is missing or empty."""
        if self.value is not None:
            return self.value.strip() or None
        if self.env:
            return (os.environ.get(self.env) or "").strip() or None
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None


def _coerce_secret(value: Any) -> Any:
    """Accept a bare string in TOML as a literal secret (warned about at load)."""
    if isinstance(value, str):
        return {"value": value}
    return value


class ConsentPolicy(BaseModel):
    """Per-pixel consent and Limited Data Use (LDU) policy.

    ``ldu_countries``/``ldu_states``: when the event's location matches (ISO
    alpha-2 country; US state code like ``ca``), the gateway sets
    ``data_processing_options=["LDU"]`` with Meta's country/state codes
    (``1``/``1000`` for US/California, ``0``/``0`` = geolocate).  ``ldu_all``
    applies LDU to every event.  ``honor_gpc`` treats a ``Sec-GPC: 1`` browser
    signal as an opt-out of sale/sharing (LDU on, event still sent unless
    ``require_consent``).  ``require_consent`` drops browser events that do not
    carry an explicit consent flag.
    """

    model_config = ConfigDict(extra="forbid")

    require_consent: bool = False
    honor_gpc: bool = True
    ldu_all: bool = False
    ldu_countries: list[str] = Field(default_factory=list)
    ldu_states: list[str] = Field(default_factory=list)


class PixelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_token: Secret | None = None
    app_secret: Secret | None = None
    test_event_code: str | None = None
    api_version: str = DEFAULT_API_VERSION
    default_country: str | None = None
    partner_agent: str | None = None
    # Browser beacon: which page origins may post to /v1/collect for this pixel.
    allowed_origins: list[str] = Field(default_factory=list)
    # Drop browser events from known crawlers/bots (counted in metrics).
    filter_bots: bool = True
    consent: ConsentPolicy = Field(default_factory=ConsentPolicy)

    _v_secrets = field_validator("access_token", "app_secret", mode="before")(_coerce_secret)

    @field_validator("api_version")
    @classmethod
    def _version_shape(cls, v: str) -> str:
        if not re.fullmatch(r"v\d+\.\d+", v):
            raise ValueError("api_version must look like 'v26.0'")
        return v


class IngestKey(BaseModel):
    """A server-to-server API key for ``POST /v1/events``, one per source system."""

    model_config = ConfigDict(extra="forbid")

    key: Secret
    # Pixels this key may send to; empty means all configured pixels.
    pixels: list[str] = Field(default_factory=list)

    _v_key = field_validator("key", mode="before")(_coerce_secret)


class WebhookSettings(BaseModel):
    """A signed inbound webhook: ``POST /v1/webhooks/{name}``.

    ``preset`` is ``shopify``, ``woocommerce``, ``stripe`` or ``mapping`` (a
    declarative mapping file, see ``mapping``); ``name`` (the table key) is the
    URL segment.  The signing ``secret`` comes from env or a file.
    """

    model_config = ConfigDict(extra="forbid")

    preset: str
    pixel_id: str
    secret: Secret
    # For preset = "mapping" (or to override a preset's default mapping): a TOML file.
    mapping: Path | None = None
    # Stripe: how old a signature timestamp may be.
    tolerance_seconds: int = Field(default=300, ge=1)
    test_event_code: str | None = None

    _v_secret = field_validator("secret", mode="before")(_coerce_secret)


class DashboardSettings(BaseModel):
    """The operator dashboard under ``/ui/``: off unless a credential is configured."""

    model_config = ConfigDict(extra="forbid")

    # Bearer/login token for the dashboard (and its actions).
    admin_token: Secret | None = None
    # Alternatively HTTP basic auth.
    basic_user: str | None = None
    basic_password: Secret | None = None

    _v_secrets = field_validator("admin_token", "basic_password", mode="before")(_coerce_secret)


class ReceiptSettings(BaseModel):
    """Receipts of final event states (``capirelay trace``): how long and how many to keep."""

    model_config = ConfigDict(extra="forbid")

    retention_days: float = Field(default=30.0, gt=0)
    max_receipts: int = Field(default=2_000_000, ge=1)
    prune_interval_seconds: float = Field(default=600.0, ge=1)


class DeliverySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=1000, ge=1, le=1000)
    linger_ms: int = Field(default=200, ge=0, le=60_000)
    max_in_flight: int = Field(default=4, ge=1, le=64)
    lease_seconds: float = Field(default=60.0, gt=0)
    request_timeout: float = Field(default=1.5, gt=0)
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_max: float = Field(default=3600.0, gt=0)
    breaker_probe_seconds: float = Field(default=30.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAPIRELAY_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    storage: str = "sqlite:///./capirelay.db"
    host: str = "127.0.0.1"
    port: int = 8080
    graph_url: str = "https://graph.facebook.com"
    partner_agent: str = "capirelay"
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL|EXTRA)$")
    # Proxies whose X-Forwarded-For we believe (IPs or CIDRs).
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_collect_body_bytes: int = Field(default=64 * 1024, ge=1024)
    pixels: dict[str, PixelSettings] = Field(default_factory=dict)
    ingest_keys: dict[str, IngestKey] = Field(default_factory=dict)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    webhooks: dict[str, WebhookSettings] = Field(default_factory=dict)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    receipts: ReceiptSettings = Field(default_factory=ReceiptSettings)
    # When set, GET /metrics needs 'Authorization: Bearer <token>' (Prometheus
    # `authorization: {credentials_file: ...}`); unset, it is open (it holds no
    # identifiers or secrets) for scrapers on a private network.
    metrics_token: Secret | None = None
    # PostgreSQL backend (storage = "postgresql://..."): connection pool size.
    postgres_pool_size: int = Field(default=10, ge=1, le=200)
    max_future_skew: int = Field(default=300, ge=0)

    _v_metrics_token = field_validator("metrics_token", mode="before")(_coerce_secret)

    @field_validator("pixels")
    @classmethod
    def _pixel_ids(cls, v: dict[str, PixelSettings]) -> dict[str, PixelSettings]:
        for pixel_id in v:
            if not _PIXEL_ID.match(pixel_id):
                raise ValueError(
                    f"pixel id {pixel_id!r} must be the numeric id from Events Manager"
                )
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("CAPIRELAY_CONFIG", "capirelay.toml")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if Path(toml_path).is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    def warnings(self) -> list[str]:
        """Things that work but should not: literal secrets, old API versions."""
        out: list[str] = []
        for pixel_id, pixel in self.pixels.items():
            if pixel.access_token and pixel.access_token.is_literal:
                out.append(
                    f"pixels.{pixel_id}.access_token is a literal in the config file; "
                    'move it to an environment variable (access_token = {env = "..."}) '
                    "or a file so it stays out of your repository"
                )
            if pixel.access_token is None:
                out.append(
                    f"pixels.{pixel_id}.access_token is not set: events are queued but "
                    "cannot be delivered until it is"
                )
        for name, key in self.ingest_keys.items():
            if key.key.is_literal:
                out.append(
                    f"ingest_keys.{name}.key is a literal in the config file; use env or file"
                )
        return out


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings; ``config_file`` overrides ``CAPIRELAY_CONFIG``.

    Raises :class:`ConfigError` with the setting's path and the reason.
    """
    from pydantic import ValidationError

    previous = os.environ.get("CAPIRELAY_CONFIG")
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        os.environ["CAPIRELAY_CONFIG"] = str(config_file)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"{loc}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("CAPIRELAY_CONFIG", None)
            else:
                os.environ["CAPIRELAY_CONFIG"] = previous
    for message in settings.warnings():
        log.warning(message)
    return settings
