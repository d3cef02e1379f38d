"""Health of what the gateway depends on but does not control: tokens, API versions, clocks.

Each pixel's access token can be revoked or expire, its pinned Graph API
version has a sunset date, and Meta judges ``event_time`` by *its* clock, not
ours.  None of that shows up until deliveries start failing, so this module
asks Graph ahead of time and answers in plain data the dashboard and
``capirelay doctor`` both render:

* :func:`token_health` calls ``GET /debug_token`` per pixel (validity, expiry,
  scopes, and whether the token's grants name the pixel);
* :func:`version_health` reads the sunset table
  (:func:`capirelay.graph.versions.version_status`);
* :func:`clock_skew` compares Graph's ``Date`` response header with the local
  clock (:func:`probe_graph` also says whether Graph answers at all).

Tokens never leave this module in any form: results carry the pixel id, never
the token, and Graph's messages pass through :func:`capirelay.graph.errors.redact`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

from capirelay.config import DEFAULT_GRAPH_URL, PixelSettings, Settings, token_replace_hint
from capirelay.graph import GraphClient, GraphError, RetryClass, explain
from capirelay.graph.errors import code_label, redact
from capirelay.graph.versions import VersionStatus, version_status
from capirelay.meta_facts import CODE_UNKNOWN_PATH

__all__ = [
    "GRAPH_URL_FIX",
    "PROBE_TIMEOUT",
    "SEND_SCOPES",
    "TOKEN_EXPIRY_FAIL_DAYS",
    "TOKEN_EXPIRY_WARN_DAYS",
    "GraphProbe",
    "TokenHealth",
    "clock_skew",
    "graph_answer",
    "probe_graph",
    "token_from_debug_data",
    "token_health",
    "version_health",
]

# A token's expiry within these days is a warning (the doctor, the scheduled diagnostics),
# within the second a failure (the doctor).
TOKEN_EXPIRY_WARN_DAYS: Final = 14
TOKEN_EXPIRY_FAIL_DAYS: Final = 3

# The permissions that let a system-user token post events to a dataset it was given:
# either one.  Meta's pages, as the reference quotes them, name no permission for
# ``POST /{pixel_id}/events`` itself; for a dataset they say "ads_management or
# business_management" (Dataset Quality API), and a write to the pixel takes either
# (docs/reference/meta-diagnostics.md, which the emulator follows too).
SEND_SCOPES: tuple[str, ...] = ("ads_management", "business_management")
PROBE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class TokenHealth:
    """What Graph says about one pixel's token.

    ``valid`` is None when Graph could not be asked (unreachable, retired API
    version): unknown, not bad.  ``expires_at`` is None for tokens that never
    expire (system-user tokens).  ``pixel_access`` is None when Graph's answer
    does not list granular targets.  ``error`` is Graph's code and message (no
    token in it), ``error_code`` that code; ``explanation`` the fix, from
    :func:`capirelay.graph.explain` or, where the answer says ``graph_url`` is
    wrong, naming ``graph_url``.
    """

    pixel_id: str
    configured: bool
    valid: bool | None
    expires_at: datetime | None
    scopes: tuple[str, ...]
    error: str | None
    explanation: str | None
    pixel_access: bool | None = None
    error_code: int | None = None
    # Where a new token goes for this pixel and whether a restart is needed
    # (:meth:`capirelay.config.Secret.how_to_replace`); None without a token setting.
    replace_hint: str | None = None

    def days_left(self, now: datetime | None = None) -> float | None:
        if self.expires_at is None:
            return None
        now = now or datetime.now(UTC)
        return (self.expires_at - now).total_seconds() / 86400

    def to_dict(self) -> dict[str, Any]:
        return {
            "pixel_id": self.pixel_id,
            "configured": self.configured,
            "valid": self.valid,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "scopes": list(self.scopes),
            "pixel_access": self.pixel_access,
            "error": self.error,
            "error_code": self.error_code,
            "explanation": self.explanation,
            "replace_hint": self.replace_hint,
        }


async def token_health(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, TokenHealth]:
    """Ask ``/debug_token`` about every pixel's token, concurrently; keyed by pixel id."""
    pixel_ids = list(settings.pixels)
    results = await asyncio.gather(
        *(
            _one_token(pixel_id, settings.pixels[pixel_id], settings, transport)
            for pixel_id in pixel_ids
        )
    )
    return dict(zip(pixel_ids, results, strict=True))


def missing_token_fix(pixel_id: str, pixel: PixelSettings) -> str:
    """How to give ``pixel_id`` its access token: the exact setting, and its env/file forms."""
    secret = pixel.access_token
    if secret is not None and secret.env:
        return (
            f"pixels.{pixel_id}.access_token reads the environment variable {secret.env}, "
            f"which is unset or empty: export {secret.env}=<token> for the gateway's process"
        )
    if secret is not None and secret.file:
        return (
            f"pixels.{pixel_id}.access_token reads the file {secret.file}, which is missing "
            "or empty: write the token into it (one line, readable by the gateway)"
        )
    return (
        f"set pixels.{pixel_id}.access_token: in capirelay.toml under [pixels.{pixel_id}] "
        'write access_token = { env = "CAPIRELAY_TOKEN" } (then export CAPIRELAY_TOKEN=<token>) '
        'or access_token = { file = "/run/secrets/capi_token" }; or set the environment '
        f"variable CAPIRELAY_PIXELS__{pixel_id}__ACCESS_TOKEN=<token>. A system-user token "
        "from Business Settings does not expire"
    )


async def _one_token(
    pixel_id: str,
    pixel: PixelSettings,
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None,
) -> TokenHealth:
    token = pixel.access_token.resolve() if pixel.access_token else None
    if token is None:
        where = pixel.access_token.describe() if pixel.access_token else "the configuration"
        return TokenHealth(
            pixel_id,
            configured=False,
            valid=False,
            expires_at=None,
            scopes=(),
            error=f"no access token found in {where}",
            explanation=missing_token_fix(pixel_id, pixel),
        )
    app_secret = pixel.app_secret.resolve() if pixel.app_secret else None
    with warnings.catch_warnings():
        # A retiring version is version_health's finding; the client's warning would repeat it.
        warnings.simplefilter("ignore", UserWarning)
        client = GraphClient(
            api_version=pixel.api_version,
            base_url=settings.graph_url,
            timeout=PROBE_TIMEOUT,
            app_secret=app_secret,
            transport=transport,
        )
    hint = token_replace_hint(pixel_id, pixel)
    async with client:
        try:
            # A token may inspect itself, so no separate app token is needed.
            answer = await client.debug_token(token, access_token=token)
        except GraphError as err:
            health = _from_graph_error(pixel_id, err, pixel.api_version)
        else:
            health = token_from_debug_data(pixel_id, answer.get("data") or {}, token)
    return dataclasses.replace(health, replace_hint=hint)


# The fix when graph_url, not the token, is what is wrong.
GRAPH_URL_FIX = (
    f'graph_url must be Graph\'s bare origin, graph_url = "{DEFAULT_GRAPH_URL}" '
    "(or an emulator's, or a forwarding proxy's that passes Graph's answers through), "
    "without a version such as /v26.0: capirelay adds api_version itself; every delivery "
    "fails until it is fixed"
)


def _from_graph_error(pixel_id: str, err: GraphError, api_version: str) -> TokenHealth:
    # Only an auth answer says something about the token; an outage or a retired
    # version says nothing either way.
    says_invalid = err.retry_class is RetryClass.AUTH or err.code in (190, 102)
    code = "" if err.code is None else f" ({code_label(err.code, err.subcode)})"
    explanation = explain(err.code, err.subcode, err.status)
    if err.code == CODE_UNKNOWN_PATH and version_status(api_version).state != "unknown":
        # The version is one Graph serves, so the unknown path is the rest of the URL:
        # a version or prefix in graph_url (/v26.0/v26.0/debug_token).
        explanation = (
            f"Unknown path (2500): api_version {api_version} is a version Graph serves, so "
            f"the path Graph did not know comes from graph_url. {GRAPH_URL_FIX}"
        )
    elif err.code is None and err.retry_class is RetryClass.CONFIG:
        # A 404/405 without Graph's error object: something else answered the path.
        explanation = (
            f"HTTP {err.status} without Graph's error object: the server at graph_url is "
            f"not Graph. {GRAPH_URL_FIX}"
        )
    return TokenHealth(
        pixel_id,
        configured=True,
        valid=False if says_invalid else None,
        expires_at=None,
        scopes=(),
        error=f"{err.message or 'request failed'}{code}",
        explanation=explanation,
        error_code=err.code,
    )


def token_from_debug_data(pixel_id: str, data: dict[str, Any], token: str) -> TokenHealth:
    """What ``/debug_token``'s ``data`` says of ``token`` (the token itself redacted from
    any error text)."""
    scopes = tuple(s for s in data.get("scopes") or () if isinstance(s, str))
    error = data.get("error") if isinstance(data.get("error"), dict) else None
    valid = bool(data.get("is_valid"))
    error_text = None
    explanation = None
    if error is not None or not valid:
        code = error.get("code") if error else 190
        subcode = error.get("subcode") if error else None
        message = str(error.get("message", "")) if error else "Graph reports the token invalid"
        error_text = redact(f"{message} ({code_label(code, subcode)})", (token,))
        explanation = explain(code if isinstance(code, int) else 190, subcode)
    return TokenHealth(
        pixel_id,
        configured=True,
        valid=valid,
        expires_at=_expiry(data.get("expires_at")),
        scopes=scopes,
        error=error_text,
        explanation=explanation,
        pixel_access=_pixel_access(pixel_id, data.get("granular_scopes")),
    )


def _expiry(value: Any) -> datetime | None:
    # Graph answers 0 for "never expires".
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return None


def _pixel_access(pixel_id: str, granular: Any) -> bool | None:
    if not isinstance(granular, list) or not granular:
        return None
    for grant in granular:
        if isinstance(grant, dict) and grant.get("scope") in SEND_SCOPES:
            targets = grant.get("target_ids")
            # No target list means the scope applies to everything the user can see.
            if targets is None or pixel_id in [str(t) for t in targets]:
                return True
    return False


def version_health(settings: Settings, today: date | None = None) -> dict[str, VersionStatus]:
    """Sunset status of each pixel's pinned Graph API version, keyed by pixel id."""
    return {
        pixel_id: version_status(pixel.api_version, today)
        for pixel_id, pixel in settings.pixels.items()
    }


@dataclass(frozen=True, slots=True)
class GraphProbe:
    """One unauthenticated request to Graph: did it answer, and what time does it think it is.

    ``skew_seconds`` is Graph's clock minus ours (positive: Graph is ahead), to
    within the ``Date`` header's one-second resolution; None without an answer,
    without a ``Date`` header, or when the answer was not Graph's.  ``not_graph``
    says what answered instead when the answer had neither Graph's JSON error
    object nor its ``x-fb-*`` headers (a web server, a captive portal, a proxy's
    own error page): then ``graph_url`` names the wrong server.
    """

    reachable: bool
    status: int | None
    skew_seconds: float | None
    latency_ms: float | None
    error: str | None
    not_graph: str | None = None


async def probe_graph(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> GraphProbe:
    """``GET`` Graph's root without a token: Graph answers it with its JSON error object.

    Any HTTP answer proves the host is reachable; only a Graph-shaped one proves
    ``graph_url`` names Graph (see :func:`graph_answer`).
    """
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, transport=transport) as http:
        sent_at = time.time()
        try:
            response = await http.get(settings.graph_url.rstrip("/") + "/")
        except httpx.HTTPError as exc:
            return GraphProbe(False, None, None, None, f"{type(exc).__name__}: {exc}")
        received_at = time.time()
    latency_ms = (received_at - sent_at) * 1000
    if not graph_answer(response):
        kind = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
        what = f"HTTP {response.status_code} ({kind}) without Graph's JSON error or x-fb-* headers"
        return GraphProbe(True, response.status_code, None, latency_ms, None, not_graph=what)
    skew = _skew(response.headers.get("date"), (sent_at + received_at) / 2)
    return GraphProbe(True, response.status_code, skew, latency_ms, None)


# Headers Graph puts on its answers (x-fb-trace-id on every one, errors included).
_GRAPH_HEADERS = ("x-fb-trace-id", "x-fb-debug", "x-fb-rev", "facebook-api-version")


def graph_answer(response: httpx.Response) -> bool:
    """Whether ``response`` came from Graph: its ``x-fb-*`` headers, or its JSON error
    object (``{"error": {"message": ..., "code": ...}}``; Graph never answers a
    token-less request with plain text or HTML)."""
    if any(name in response.headers for name in _GRAPH_HEADERS):
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("code"), int)


def _skew(date_header: str | None, local_time: float) -> float | None:
    if not date_header:
        return None
    try:
        remote = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    if remote.tzinfo is None:
        remote = remote.replace(tzinfo=UTC)
    return remote.timestamp() - local_time


async def clock_skew(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> float | None:
    """Graph's clock minus the local clock, in seconds; None when Graph does not say."""
    return (await probe_graph(settings, transport=transport)).skew_seconds
