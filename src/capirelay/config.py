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

import difflib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from capirelay.limits import check_test_event_code

log = logging.getLogger("capirelay.config")

DEFAULT_API_VERSION = "v26.0"
DEFAULT_GRAPH_URL = "https://graph.facebook.com"
_PIXEL_ID = re.compile(r"^[0-9]{1,32}$")


# capirelay.sources.webhooks.PRESETS' names (tests/test_config.py keeps the two equal):
# checked with the other settings, so a misspelt preset is told in the first round.
def _pixel_id(value: str) -> str:
    if not _PIXEL_ID.match(value):
        raise ValueError(f"pixel id {value!r} must be the numeric id from Events Manager")
    return value


PixelId = Annotated[str, AfterValidator(_pixel_id)]
WEBHOOK_PRESETS: Final = ("mapping", "shopify", "stripe", "woocommerce")
# A Graph API version as a path segment ("v26.0"): the client adds it itself.
_VERSION_SEGMENT = re.compile(r"^v\d+\.\d+$")


class ConfigError(ValueError):
    """The configuration cannot work; the message names the setting and the fix.

    ``path`` is the config file it is about, when there is one.
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class Secret(BaseModel):
    """Where a secret comes from: ``env`` (a variable), ``file`` (a path) or a literal ``value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: Path | None = None
    value: str | None = Field(default=None, repr=False)
    # The CAPIRELAY_* variable a literal ``value`` came from, and how: "quoted" (its whole
    # value in double quotes, JSON text, so read as a literal rather than as the variable)
    # or "json" (inside a table variable's JSON: CAPIRELAY_PIXELS='{"1": {"access_token":
    # "EAA..."}}'); None for a literal in the file.
    _from: tuple[Literal["quoted", "json"], str] | None = PrivateAttr(default=None)

    @classmethod
    def quoted_in(cls, variable: str, text: str) -> Secret:
        """The literal ``text`` of ``variable``, whose value was ``"text"`` in quotes."""
        return cls._literal_of(text, ("quoted", variable))

    @classmethod
    def inside_json_of(cls, variable: str, text: str) -> Secret:
        """The literal ``text`` found inside the JSON of the table variable ``variable``."""
        return cls._literal_of(text, ("json", variable))

    @classmethod
    def _literal_of(cls, text: str, origin: tuple[Literal["quoted", "json"], str]) -> Secret:
        secret = cls(value=text)
        secret._from = origin
        return secret

    @property
    def quoted_variable(self) -> str | None:
        """The variable this literal was set in with quotes (None: not so set)."""
        return self._variable_if("quoted")

    @property
    def json_variable(self) -> str | None:
        """The variable whose JSON held this literal (None: not from one)."""
        return self._variable_if("json")

    def _variable_if(self, how: str) -> str | None:
        origin = self._from
        return origin[1] if origin and origin[0] == how and self.value is not None else None

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
        if self.quoted_variable:
            return (
                f"literal value of the environment variable {self.quoted_variable} "
                "(set in double quotes)"
            )
        if self.json_variable:
            return f"literal value inside the JSON of the environment variable {self.json_variable}"
        return "literal value in the config file"

    def how_to_replace(self, setting: str) -> str:
        """How to put a new value (a rotated token) where ``setting`` reads it, and whether
        the gateway must restart for it: a file is read again at its next use, but a
        running process keeps the environment it was started with."""
        if self.file:
            return (
                f"write the new value into the file {self.file} ({setting}): the gateway reads "
                "it again at its next use, no restart needed"
            )
        table, _, key = setting.rpartition(".")
        # As written in the config: ``key = { file = ... }`` under its table (a dotted
        # ``pixels.1.access_token = ...`` inside [pixels.1] would nest once more).
        as_file = f'{key} = {{ file = "..." }}' + (f" under [{table}]" if table else "")
        if self.env:
            return (
                f"set the environment variable {self.env} ({setting}) to the new value and "
                "restart the gateway: a running process keeps the environment it started with "
                f"(or use {as_file}, which is read again at each use)"
            )
        if self.quoted_variable:
            return (
                f"set the environment variable {self.quoted_variable} ({setting}) to the new "
                "value, without the double quotes (with them it is read as a literal), and "
                f"restart the gateway (or use {as_file}, which is read again at each use)"
            )
        if self.json_variable:
            return (
                f"set {setting} inside the JSON of the environment variable "
                f"{self.json_variable} to the new value and restart the gateway (or put "
                '{"file": "..."} there in its place, which is read again at each use)'
            )
        return (
            f"replace the literal {setting} in the config file and restart the gateway "
            f"(better: {as_file}, read again at each use)"
        )

    def resolve(self) -> str | None:
        """Read the secret now; ``None`` when the variable/file is missing or empty."""
        if self.value is not None:
            return self.value.strip() or None
        if self.env:
            return (os.environ.get(self.env) or "").strip() or None
        assert self.file is not None
        return _read_secret_file(self.file)


# A secret file's text by the path's status when it was read.  Gateways resolve secrets on
# every request (an ingest key per configured key, a beacon's verification secret, a
# webhook's signing secret): a read costs an open, a read and a close (~30 µs here), a
# status check one system call (~4 µs).  The status includes the change time (ctime),
# which every write, rename or permission change sets to the kernel's clock and no
# caller can set back.  That clock ticks coarsely (a few milliseconds), so two writes of
# the same length within one tick can leave the same status: a file changed within
# _RACY_SECONDS of now is therefore read every time, not remembered (git's "racy clean"
# rule).  The answer is what a read would give, only without reading an unchanged file.
# A remembered text is also read again once it is _REREAD_SECONDS old: a network file
# system may answer the status from its attribute cache (NFS: up to a minute) while an
# open asks the server, so there a change is seen within that second, not a minute.
_RACY_SECONDS = 2.0
_REREAD_SECONDS = 1.0
# path -> (status when read, text, wall-clock time of the read)
_SECRET_FILES: dict[Path, tuple[tuple[int, int, int, int, int], str | None, float]] = {}
_clock = time.time  # the tests move it


def _read_secret_file(path: Path) -> str | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    stamp = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    cached = _SECRET_FILES.get(path)
    now = _clock()
    if cached is not None and cached[0] == stamp and 0 <= now - cached[2] < _REREAD_SECONDS:
        return cached[1]
    try:
        text = path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
    # A kept entry whose file changed since can never match again: its ctime is gone.
    if now - max(status.st_ctime, status.st_mtime) > _RACY_SECONDS:
        _SECRET_FILES[path] = (stamp, text, now)
    return text


def _coerce_secret(value: Any) -> Any:
    """Accept a bare string in TOML as a literal secret (warned about at load)."""
    if isinstance(value, str):
        return {"value": value}
    return value


def graph_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a ``graph_url``, or None when it can.

    Requests go to ``{graph_url}/{api_version}/{path}``, so ``graph_url`` is Graph's
    origin (``https://graph.facebook.com``, an emulator's ``http://127.0.0.1:8765``),
    optionally with the path prefix of a forwarding proxy that serves Graph under
    one (``https://egress.example/meta``).  A version segment in it (the URL copied
    from Meta's documentation, ``.../v26.0``) makes every call ``/v26.0/v26.0/...``,
    which Graph refuses with code 2500; Meta's own host has no prefix at all.  The
    URL itself is not repeated in the answer (it may carry a proxy's credentials).
    """
    example = f'e.g. graph_url = "{DEFAULT_GRAPH_URL}"'
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # "http://[::1": an unclosed or misplaced IPv6 bracket
        return f"must be an http(s) URL with a host (an IPv6 host in [...]), {example}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL with a host, {example}"
    if parts.query or parts.fragment:
        return f"must not have a query string or fragment, {example}"
    segments = [segment for segment in parts.path.split("/") if segment]
    versions = [segment for segment in segments if _VERSION_SEGMENT.match(segment)]
    if versions:
        return (
            f"must not include the Graph API version (/{versions[0]}): capirelay adds each "
            f"pixel's api_version itself, so every call would go to /{versions[0]}/"
            f"<api_version>/... and fail with error 2500; remove /{versions[0]} and "
            f"everything after it ({example}) and pin the version with api_version under "
            "[pixels.<PIXEL_ID>]"
        )
    if parts.hostname == urlsplit(DEFAULT_GRAPH_URL).hostname and segments:
        return f"must be Meta's bare origin without a path ({example})"
    return None


def token_replace_hint(pixel_id: str, pixel: PixelSettings) -> str | None:
    """Where a new access token for ``pixel_id`` goes and whether a restart is needed
    (:meth:`Secret.how_to_replace`); ``None`` without a token setting."""
    if pixel.access_token is None:
        return None
    return pixel.access_token.how_to_replace(f"pixels.{pixel_id}.access_token")


def after_token_fix(hint: str, *, new_token: bool = True) -> str:
    """:func:`token_replace_hint` as the sentence that follows a fix: "Then ..." after a fix
    that makes a new token, "If you generate a new token: ..." after one that keeps it (a
    grant, for a permission error)."""
    return f"Then {hint}" if new_token else f"If you generate a new token: {hint}"


def unconfigured_pixel_problem(pixel_id: str, configured: Iterable[str]) -> str:
    """What a webhook whose ``pixel_id`` has no ``[pixels]`` table is told, by the settings'
    validation and by :func:`capirelay.sources.webhooks.configured.load_webhooks` alike."""
    known = ", ".join(sorted(configured)) or "none yet"
    if not _PIXEL_ID.match(pixel_id):
        # "add a [pixels.abc] table" would itself be refused: the id is the mistake.
        return (
            f"pixel_id {pixel_id!r} is not a pixel id: use the numeric dataset id from "
            f"Events Manager, one of the configured pixels ({known})"
        )
    return (
        f"pixel_id {pixel_id} is not configured under [pixels]; add a "
        f"[pixels.{pixel_id}] table, or set pixel_id to a configured pixel ({known})"
    )


def _unconfigured_webhook_pixels(pixels: Any, webhooks: Any) -> list[InitErrorDetails]:
    """One error per webhook naming a pixel that has no table, from the settings as given
    (``pixels`` and ``webhooks`` before or after validation).

    A pixel's table counts as there even under an id that is itself refused
    (``act_123``): that id's own error is the one to fix.  The configured pixels the
    message lists are the valid ids.  Nothing is told when either table is not a table."""
    pixels = {} if pixels is None else pixels
    if not isinstance(pixels, Mapping) or not isinstance(webhooks, Mapping):
        return []
    present = {str(pixel_id) for pixel_id in pixels}
    configured = [pixel_id for pixel_id in present if _PIXEL_ID.match(pixel_id)]
    errors: list[InitErrorDetails] = []
    for name, hook in webhooks.items():
        if isinstance(hook, Mapping):
            pixel_id = hook.get("pixel_id")
        else:
            pixel_id = getattr(hook, "pixel_id", None)
        if isinstance(pixel_id, str) and pixel_id not in present:
            problem = unconfigured_pixel_problem(pixel_id, configured)
            errors.append(
                {
                    "type": PydanticCustomError("webhook_pixel_unconfigured", problem),
                    "loc": ("webhooks", str(name), "pixel_id"),
                    "input": pixel_id,
                }
            )
    return errors


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


class GraphClientOptions(NamedTuple):
    """What a pixel's requests to Graph are made with, beside the token: the
    ``GraphClient``/``SyncGraphClient`` keyword arguments (see
    :meth:`Settings.graph_client_options`)."""

    api_version: str
    app_secret: str | None
    partner_agent: str | None


def _test_event_code_limit(value: str | None) -> str | None:
    """The same limit ingest applies (capirelay.limits), refused when the config is read."""
    problems = check_test_event_code(value)
    if problems:
        raise ValueError(problems[0].message)
    return value


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
    # Browser beacon: the event names /v1/collect accepts for this pixel; unset: any name.
    beacon_events: list[str] | None = None
    # Browser beacon: names that need a server-signed token (capirelay.beacon_tokens).
    require_verified: list[str] = Field(default_factory=list)
    # The HMAC-SHA256 key the shop's server signs beacon tokens with (env or file).
    verification_secret: Secret | None = None

    # Emails, phone numbers and secrets in event_source_url/referrer_url query strings or
    # custom_data: "strip" them (warning), "reject" the event, or "keep" (capirelay.pii_scrub).
    pii_in_urls: Literal["strip", "reject", "keep"] = "strip"

    _v_secrets = field_validator(
        "access_token", "app_secret", "verification_secret", mode="before"
    )(_coerce_secret)
    _v_test_event_code = field_validator("test_event_code")(_test_event_code_limit)

    @field_validator("beacon_events", "require_verified")
    @classmethod
    def _event_names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not isinstance(n, str) or not n.strip() for n in v):
            raise ValueError('event names must be non-empty strings, e.g. ["Purchase"]')
        return v

    @model_validator(mode="after")
    def _verified_names_need_a_secret(self) -> PixelSettings:
        if self.require_verified and self.verification_secret is None:
            raise ValueError(
                "require_verified needs verification_secret (the key your server signs "
                'beacon tokens with), e.g. verification_secret = { env = "..." }'
            )
        if self.beacon_events is not None:
            missing = [n for n in self.require_verified if n not in self.beacon_events]
            if missing:
                raise ValueError(
                    f"require_verified names {missing} that beacon_events does not allow; "
                    "add them to beacon_events"
                )
        return self

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

    # Quota: events per second this key may send (a request of N events takes N), and
    # how many it may send at once.  Unset: no quota.
    events_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)

    _v_key = field_validator("key", mode="before")(_coerce_secret)

    @model_validator(mode="after")
    def _quota_pair(self) -> IngestKey:
        if (self.events_per_second is None) != (self.burst is None):
            raise ValueError("set both events_per_second and burst for a quota, or neither")
        return self


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
    # For preset = "mapping" (or to override a preset's default mapping): a TOML file,
    # a relative path read from the config file's directory.
    mapping: Path | None = None
    # Stripe: how old a signature timestamp may be.
    tolerance_seconds: int = Field(default=300, ge=1)
    test_event_code: str | None = None
    # Shopify/WooCommerce: each line item's content id, e.g. "{sku}" or "{sku}_{id}|wc_post_id_{id}"
    # (capirelay.sources.content_ids); default: the vendor's own Meta catalog integration's form.
    content_id: str | None = None

    _v_secret = field_validator("secret", mode="before")(_coerce_secret)
    _v_test_event_code = field_validator("test_event_code")(_test_event_code_limit)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in WEBHOOK_PRESETS:
            near = difflib.get_close_matches(v, WEBHOOK_PRESETS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ValueError(
                f"unknown webhook preset {v!r}; {hint}known: {', '.join(WEBHOOK_PRESETS)}"
            )
        return v


class RateLimit(BaseModel):
    """A token bucket: ``rate`` requests per second on average, ``burst`` at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitSettings(BaseModel):
    """Token-bucket limits on the unauthenticated routes (``capirelay.server.rate_limit``).

    Per gateway process: N replicas let N times these through (see the README).
    The defaults fit a busy shop's real traffic: a shopper's browser sends a few
    beacons per page; a whole shop rarely more than a few hundred a second.
    """

    model_config = ConfigDict(extra="forbid")

    # POST /v1/collect, per client address (IPv6: per /64), behind trusted_proxies.
    collect_per_address: RateLimit = RateLimit(rate=10, burst=100)
    # POST /v1/collect, per pixel, all addresses together.
    collect_per_pixel: RateLimit = RateLimit(rate=500, burst=5000)
    # POST /v1/webhooks/<name>, per client address, checked before the signature.
    webhook_per_address: RateLimit = RateLimit(rate=50, burst=500)
    # POST /v1/webhooks/<name>, per webhook, all addresses together; signed requests only.
    webhook_per_name: RateLimit = RateLimit(rate=200, burst=2000)
    # Buckets kept per limit (least recently used ones are forgotten past it).
    max_tracked_addresses: int = Field(default=100_000, ge=100)


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


class DiagnosticsSettings(BaseModel):
    """Meta's diagnostics checks, pixel settings and sent-versus-counted, pulled on a schedule."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_seconds: float = Field(default=3600.0, ge=60.0)
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    first_run_seconds: float = Field(default=60.0, ge=0.0)
    reporting_lag_hours: float = Field(default=3.0, ge=0.0, le=72.0)
    lookback_hours: int = Field(default=24, ge=1, le=168)
    tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    min_events: int = Field(default=20, ge=1)


class OrderLedgerSettings(BaseModel):
    """``[order_ledger]``: how long order events stay deduplicated (see capirelay.orders)."""

    model_config = ConfigDict(extra="forbid")

    # Past Meta's 48 h dedup window: long enough for refunds, late fulfilment and a
    # year-end replay.  At least 3 days, or the ledger would add nothing to the dedup.
    retention_days: int = Field(default=400, ge=3, le=3650)
    # Bound on storage: beyond it the oldest entries go first.  Measured (bench/order_ledger.py):
    # ~70 bytes an entry on SQLite, ~150 on PostgreSQL, so the default cap is ~0.7 / 1.5 GB.
    max_entries: int = Field(default=10_000_000, ge=1000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAPIRELAY_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    # A gateway whose every event is meant as a test event (capirelay demo): serve's
    # start-up does not warn of a test_event_code left on (capirelay.ops.preflight).
    test_events_intended: ClassVar[bool] = False

    storage: str = "sqlite:///./capirelay.db"
    host: str = "127.0.0.1"
    port: int = 8080
    # Graph's origin, or an emulator's or forwarding proxy's (see graph_url_problem).
    graph_url: str = DEFAULT_GRAPH_URL
    partner_agent: str = "capirelay"
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL|EXTRA)$")
    # Proxies whose X-Forwarded-For we believe (IPs or CIDRs).
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_collect_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Seconds a client may take to send a request's headers before its connection is
    # closed (slowloris); see capirelay.server.header_timeout.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Seconds a client may take, once its headers are in, to send the request's body.
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # The ids are checked as the dict's keys, so an id like "act_123" is reported in the same
    # round as a mistake inside its table.
    pixels: dict[PixelId, PixelSettings] = Field(default_factory=dict)
    ingest_keys: dict[str, IngestKey] = Field(default_factory=dict)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    webhooks: dict[str, WebhookSettings] = Field(default_factory=dict)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    diagnostics: DiagnosticsSettings = Field(default_factory=DiagnosticsSettings)
    receipts: ReceiptSettings = Field(default_factory=ReceiptSettings)
    # When set, GET /metrics needs 'Authorization: Bearer <token>' (Prometheus
    # `authorization: {credentials_file: ...}`); unset, it is open (it holds no
    # identifiers or secrets) for scrapers on a private network.
    metrics_token: Secret | None = None
    # PostgreSQL backend (storage = "postgresql://..."): connection pool size.
    postgres_pool_size: int = Field(default=10, ge=1, le=200)
    max_future_skew: int = Field(default=300, ge=0)
    order_ledger: OrderLedgerSettings = Field(default_factory=OrderLedgerSettings)

    _v_metrics_token = field_validator("metrics_token", mode="before")(_coerce_secret)

    @field_validator("graph_url")
    @classmethod
    def _graph_origin(cls, v: str) -> str:
        problem = graph_url_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _webhook_pixels(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """A webhook naming a pixel that is not configured, told with every other mistake.

        An "after" validator runs only once everything else is valid: the mistake came in
        a round of its own, after the user had fixed the others.  Here it is checked on
        the settings as given when validation failed, and added to those errors."""
        try:
            settings = handler(data)
        except ValidationError as exc:
            if not isinstance(data, Mapping):
                raise
            unconfigured = _unconfigured_webhook_pixels(data.get("pixels"), data.get("webhooks"))
            if not unconfigured:
                raise
            raise ValidationError.from_exception_data(
                exc.title, [*_as_init_errors(exc), *unconfigured]
            ) from None
        unconfigured = _unconfigured_webhook_pixels(settings.pixels, settings.webhooks)
        if unconfigured:
            raise ValidationError.from_exception_data(cls.__name__, unconfigured)
        return settings

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSecrets(settings_cls)]
        if Path(toml_path).is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    def graph_client_options(self, pixel: PixelSettings | None) -> GraphClientOptions:
        """How the gateway's delivery sends a pixel's events: its api_version, its
        app_secret (for appsecret_proof, resolved now) and its partner_agent, else the
        gateway's.  ``None`` (a pixel missing from the config) gets the defaults."""
        pixel = pixel if pixel is not None else PixelSettings()
        return GraphClientOptions(
            api_version=pixel.api_version,
            app_secret=pixel.app_secret.resolve() if pixel.app_secret else None,
            partner_agent=pixel.partner_agent or self.partner_agent,
        )

    def warnings(self) -> list[str]:
        """Things that work but should not: literal secrets, old API versions."""
        from capirelay.config_errors import literal_secret_warning

        out: list[str] = []
        # Every secret setting, by its type: a literal is warned about alike, wherever it is.
        for place, model, name in _secret_fields(self):
            secret = getattr(model, name)
            if isinstance(secret, Secret) and secret.is_literal:
                out.append(
                    _quoted_variable_warning(".".join(place), secret)
                    or literal_secret_warning(place, secret.json_variable)
                )
        for pixel_id, pixel in self.pixels.items():
            if pixel.access_token is None:
                out.append(
                    f"pixels.{pixel_id}.access_token is not set: events are queued but "
                    "cannot be delivered until it is"
                )
        return out


def _quoted_variable_warning(setting: str, secret: Secret) -> str | None:
    """The warning for a literal set as ``VAR="..."`` in quotes (None for one in the file):
    it is in the environment already, only read as a literal because of the quotes."""
    variable = secret.quoted_variable
    if variable is None:
        return None
    return (
        f"{setting}: the environment variable {variable} is read as a literal (once, at "
        "start), not as that variable, because its value is in double quotes (JSON text); "
        "remove the quotes from the value (some .env files and docker's env_file keep them)"
    )


class _EnvSecrets(EnvSettingsSource):
    """The ``CAPIRELAY_...`` environment, with a secret set there as plain text
    (``CAPIRELAY_PIXELS__1234567890__ACCESS_TOKEN=EAA...``) read like ``{ env = ... }``.

    Such a value was taken for a literal, so the settings warned that it sat "in the
    config file" and should move to an environment variable, where it already was; and a
    secret that is not optional (``CAPIRELAY_INGEST_KEYS__<NAME>__KEY``,
    ``CAPIRELAY_WEBHOOKS__<NAME>__SECRET``) stopped every command with pydantic-settings'
    "error parsing value" (it tried to read the text as JSON).  Here it becomes a
    :class:`Secret` naming its variable: read at use time, described as that variable.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        # (setting name, text) of the secrets decode_complex_value saw, and how each
        # becomes a Secret naming its variable: read from the variable (text that was not
        # JSON, or JSON's number or boolean, kept as written), or a literal that keeps the
        # variable's name for its warning (a JSON string: "EAA..." in quotes).
        self._found: dict[tuple[str, str], Callable[[str, str], Secret]] = {}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        secret = field is not None and _holds_a_secret(field.annotation)
        try:
            decoded = super().decode_complex_value(field_name, field, value)
            # Text that JSON reads as a number or a boolean (a webhook secret of digits,
            # "1e5", "0.50") is a secret's text too, kept as written: as a number it was
            # refused with "input should be a valid dictionary".  A table ({"env": ...}),
            # a quoted string and null keep their JSON meaning.  Only secrets: a numeric
            # setting (port, burst ...) is not complex and never comes here.
            bare = secret and isinstance(decoded, int | float)
            if secret and isinstance(decoded, str) and decoded:
                self._found[(field_name.lower(), decoded)] = Secret.quoted_in
        except ValueError:
            if not secret:
                raise
            bare = True  # not JSON: a bare secret
        if bare:
            if value.strip():
                self._found[(field_name.lower(), value)] = _variable_secret
            return value  # made a Secret naming its variable in __call__
        return decoded

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        self._name_variables(data, ())
        self._name_json_literals(data, ())
        return data

    def _name_json_literals(self, holder: dict[str, Any], path: tuple[str, ...]) -> None:
        # A literal secret inside a table's JSON (CAPIRELAY_PIXELS='{"1": {"access_token":
        # "EAA..."}}', or {"value": "EAA..."} there) keeps its variable's name for its
        # warning: it is not in the config file.  The variable is found as the config
        # errors find it (the nearest one whose JSON holds the setting).  An empty one
        # is left for the secret's own check to refuse.
        from capirelay.config_errors import is_secret_setting, variable_holding

        for key, value in holder.items():
            place = (*path, str(key))
            text = value.get("value") if isinstance(value, dict) and len(value) == 1 else value
            if isinstance(text, str) and text and is_secret_setting(self.settings_cls, place):
                variable = variable_holding(place)
                if variable is not None:
                    holder[key] = Secret.inside_json_of(variable, text)
            elif isinstance(value, dict):
                self._name_json_literals(value, place)

    def _name_variables(self, holder: dict[str, Any], path: tuple[str, ...]) -> None:
        # Only text that was not JSON becomes the variable.  A quoted value ("EAA...")
        # keeps its decoded form, as before: a literal, which names its variable for the
        # warning.  An empty one is not taken, so it stays a literal, which the
        # secret's own check refuses (an unset ${VAR} in a compose file would otherwise
        # lock the dashboard or /metrics without a word).
        for key, value in holder.items():
            if isinstance(value, dict):
                self._name_variables(value, (*path, str(key)))
                continue
            make = self._found.get((str(key).lower(), value)) if isinstance(value, str) else None
            if make is None:
                continue
            variable = _variable_named(("CAPIRELAY", *path, str(key)))
            if variable is not None:
                holder[key] = make(variable, value)


def _variable_secret(variable: str, _text: str) -> Secret:
    return Secret(env=variable)


def _holds_a_secret(annotation: Any) -> bool:
    return annotation is Secret or Secret in getattr(annotation, "__args__", ())


def _secret_fields(
    model: BaseModel, place: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], BaseModel, str]]:
    """Every secret-typed setting under ``model``, set or not: its place
    (``("pixels", "42", "access_token")``), the model holding it and the field's name.

    Found by the fields' types, in the nested settings and their tables, so a secret
    setting added to any of them is included without being listed here."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if _holds_a_secret(field.annotation):
            yield (*place, name), model, name
        elif isinstance(value, BaseModel):
            yield from _secret_fields(value, (*place, name))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, BaseModel):
                    yield from _secret_fields(item, (*place, name, str(key)))


def _variable_named(path: tuple[str, ...]) -> str | None:
    """The environment variable whose name is ``path`` joined by ``__`` (any case)."""
    wanted = "_".join(path[:1]) + "_" + "__".join(path[1:])
    for variable in os.environ:
        if variable.lower() == wanted.lower():
            return variable
    return None


def _as_init_errors(exc: ValidationError) -> list[InitErrorDetails]:
    """``exc``'s errors, to raise again with others: each keeps its type, place and message."""
    return [
        {
            "type": PydanticCustomError(error["type"], error["msg"]),
            "loc": error["loc"],
            "input": error["input"],
        }
        for error in exc.errors(include_url=False)
    ]


def redact_storage_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and log): everything
    from the ``:`` after the user name to the last ``@`` (so a password holding an
    unencoded ``@``, ``/`` or ``?`` is masked whole; a URL with an ``@`` further on
    shows less than it could, never a password), and a ``password=`` query parameter."""
    url = re.sub(r"^([A-Za-z][\w+.-]*://[^:/?#@\s]*):.*@", r"\1:***@", url, flags=re.S)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def config_path(config_file: str | Path | None = None) -> Path | None:
    """The config file commands read: ``--config``, else ``$CAPIRELAY_CONFIG``, else
    ``./capirelay.toml`` when it exists; ``None`` when there is none (defaults + env).

    Raises :class:`ConfigError` when a file is named explicitly but does not exist.
    """
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file {config_file} does not exist (given with --config)")
        return Path(config_file)
    named = os.environ.get("CAPIRELAY_CONFIG")
    if named:
        if not Path(named).is_file():
            raise ConfigError(f"config file {named} does not exist (named by CAPIRELAY_CONFIG)")
        return Path(named)
    default = Path("capirelay.toml")
    return default if default.is_file() else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings; ``config_file`` overrides ``CAPIRELAY_CONFIG``.

    Raises :class:`ConfigError` whose message is one ``FILE:LINE:COL: what is wrong``
    line per mistake (see :mod:`capirelay.config_errors`).
    """
    import tomllib

    from pydantic import ValidationError

    from capirelay.config_errors import syntax_error_line, validation_error_lines

    path = config_path(config_file)
    previous = os.environ.get("CAPIRELAY_CONFIG")
    if config_file is not None:
        os.environ["CAPIRELAY_CONFIG"] = str(config_file)
    try:
        settings = Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        assert path is not None  # only a file can have a syntax error
        raise ConfigError(syntax_error_line(path, exc), path=path) from None
    except ValidationError as exc:
        lines = validation_error_lines(path, exc, Settings)
        raise ConfigError("\n".join(lines), path=path) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}:1:1: the file is not UTF-8 text", path=path) from None
    except SettingsError as exc:
        raise ConfigError(_environment_error(exc), path=path) from None
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("CAPIRELAY_CONFIG", None)
            else:
                os.environ["CAPIRELAY_CONFIG"] = previous
    if path is not None:
        _mappings_beside(settings, Path(path))
        _secret_files_beside(settings, Path(path))
    for message in settings.warnings():
        log.warning(message)
    return settings


def _environment_error(exc: SettingsError) -> str:
    """A ``CAPIRELAY_*`` variable pydantic-settings could not read (a table's variable
    that is not JSON: ``CAPIRELAY_PIXELS=oops``), named, with the fix; never its value."""
    found = re.search(r'field "([^"]+)"', str(exc))
    variable = _variable_named(("CAPIRELAY", found.group(1))) if found else None
    where = f"environment variable {variable}" if variable else "a CAPIRELAY_* environment variable"
    name = variable or "CAPIRELAY_DIAGNOSTICS"
    return (
        f"{where}: not valid JSON. A table set in one variable is written as JSON "
        f'({name}=\'{{"key": "value"}}\'), or set its keys one variable each '
        f"({name}__KEY=value); or unset it to use the config file's"
    )


def _mappings_beside(settings: Settings, config_file: Path) -> None:
    """A webhook's relative ``mapping`` path is read from the config file's directory, not
    from wherever the command runs: a config and the mapping files beside it work from
    any directory (``examples/capirelay.toml`` named ``examples/mappings/crm.toml`` and
    worked from the repository's root only)."""
    for hook in settings.webhooks.values():
        if hook.mapping is not None and not hook.mapping.is_absolute():
            hook.mapping = config_file.parent / hook.mapping


def _secret_files_beside(settings: Settings, config_file: Path) -> None:
    """A secret's relative ``file`` is read from the config file's directory, like a
    webhook's ``mapping``: ``{ file = "secrets/token" }`` beside a config in the
    repository works whatever directory ``serve`` or ``doctor`` runs from (it was read
    from the current directory: under systemd, ``/secrets/token``)."""
    for _place, model, name in _secret_fields(settings):
        secret = getattr(model, name)
        if isinstance(secret, Secret) and secret.file is not None:
            try:
                file = secret.file.expanduser()
            except RuntimeError:  # no home directory to expand ~ to: kept as written
                file = secret.file
            if not file.is_absolute():
                file = config_file.parent / file
                if not file.exists() and secret.file.exists():
                    # Read from the current directory before this version: say where
                    # the file is now looked for, rather than only "missing" later.
                    log.warning(
                        "%s: the secret file %s is now read beside the config file, as "
                        "%s, which does not exist; %s in the current directory does. "
                        "Move the file there or give its absolute path",
                        config_file,
                        secret.file,
                        file,
                        secret.file.resolve(),
                    )
            if file != secret.file:
                setattr(model, name, secret.model_copy(update={"file": file}))
