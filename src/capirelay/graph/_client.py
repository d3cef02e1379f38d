"""The Conversions API client: one POST per batch, over one reused connection pool.

``GraphClient`` (async) and ``SyncGraphClient`` share everything except the I/O:
building the request (:class:`_RequestBuilder`), reading the response
(:func:`_read_json`) and naming transport failures (:func:`_transport_errors`) are
I/O-free, so both clients behave identically.

Choices, each for a reason:
* The access token and ``appsecret_proof`` travel in the JSON body, never in the
  URL, so they never land in proxy, access or httpx logs.
* Events may be given as dicts or as pre-encoded JSON bytes; bytes are spliced
  into the body as they are, so the gateway never re-parses what it stored.
* Default timeout 1.5 s, Meta's recommendation for ``/events``.
* The transport is injectable (``httpx.ASGITransport(app=...)``, a
  ``MockTransport``), so tests swap the transport, not the code.
* Every failure, including timeouts and refused connections, is a
  :class:`GraphError` with a retry class; no token or body ever reaches its text.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx
import orjson

from capirelay import __version__
from capirelay.graph import _pixel
from capirelay.graph._pixel import AdsPixelSettings, DACheck, StatsBucket
from capirelay.graph.errors import GraphError
from capirelay.graph.versions import DEFAULT_API_VERSION, is_well_formed, warn_if_retiring
from capirelay.meta_facts import MAX_EVENTS_PER_REQUEST

logger = logging.getLogger("capirelay.graph")

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_TIMEOUT = 1.5
USER_AGENT = f"capirelay/{__version__}"
DEFAULT_LIMITS = httpx.Limits(
    max_connections=64, max_keepalive_connections=32, keepalive_expiry=30.0
)
DEFAULT_DATASET_QUALITY_FIELDS = (
    "web{event_match_quality{composite_score,match_key_feedback{identifier,coverage{percentage},"
    "potential_aly_acr_increase{percentage,description}},diagnostics},event_name,"
    "event_coverage{percentage,goal_percentage},dedupe_key_feedback{dedupe_key,"
    "browser_events_with_dedupe_key{percentage},server_events_with_dedupe_key{percentage}},"
    "data_freshness}"
)

EventInput = Mapping[str, Any] | bytes


@dataclass(frozen=True, slots=True)
class EventsResponse:
    """Graph's answer to a successful ``POST /{pixel_id}/events``."""

    events_received: int
    messages: list[str] = field(default_factory=list)
    fbtrace_id: str | None = None


def appsecret_proof(app_secret: str, access_token: str) -> str:
    """Hex HMAC-SHA256 of the token keyed by the app secret, as Graph expects."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def encode_events_body(events: Sequence[EventInput], params: Mapping[str, Any]) -> bytes:
    """``{"data": [...], **params}`` with byte events spliced in without re-parsing."""
    parts = [_encode_event(index, event) for index, event in enumerate(events)]
    tail = orjson.dumps(dict(params))
    separator = b"," if len(tail) > 2 else b""
    return b'{"data":[' + b",".join(parts) + b"]" + separator + tail[1:]


def _encode_event(index: int, event: EventInput) -> bytes:
    if isinstance(event, bytes | bytearray | memoryview):
        encoded = bytes(event).strip()
        if not encoded.startswith(b"{"):
            raise ValueError(f"event {index}: pre-encoded events must be JSON objects")
        return encoded
    return orjson.dumps(event)


@dataclass(frozen=True, slots=True)
class _Call:
    """One request as arguments to ``build_request`` of an httpx client, sync or async."""

    method: str
    url: str
    options: dict[str, Any]


class _RequestBuilder:
    """The I/O-free half of the client: URLs, bodies, headers and response parsing."""

    def __init__(
        self,
        *,
        api_version: str,
        base_url: str,
        app_secret: str | None,
        partner_agent: str | None,
    ) -> None:
        if not is_well_formed(api_version):
            raise ValueError(f"api_version must look like {DEFAULT_API_VERSION!r}")
        warn_if_retiring(api_version)
        self.api_version = api_version
        self.base_url = base_url.rstrip("/")
        self.app_secret = app_secret
        self.partner_agent = partner_agent

    def events_request(
        self,
        pixel_id: str | int,
        events: Sequence[EventInput],
        *,
        access_token: str,
        test_event_code: str | None,
        partner_agent: str | None,
        namespace_id: str | None,
        upload_id: str | None,
        upload_tag: str | None,
        upload_source: str | None,
    ) -> _Call:
        """The ``POST /{pixel_id}/events`` request; raises ValueError before any I/O."""
        url = self.events_url(pixel_id)
        body = self.events_body(
            events,
            access_token=access_token,
            test_event_code=test_event_code,
            partner_agent=partner_agent,
            namespace_id=namespace_id,
            upload_id=upload_id,
            upload_tag=upload_tag,
            upload_source=upload_source,
        )
        return _Call("POST", url, {"content": body, "headers": _JSON_HEADERS})

    def get_request(self, path: str, params: Mapping[str, str], access_token: str) -> _Call:
        """A versioned ``GET /{version}/{path}``, the caller's token in the header."""
        return _Call(
            "GET",
            f"{self.base_url}/{self.api_version}/{path}",
            {
                "params": {**params, **self.proof_params(access_token)},
                "headers": self.auth_headers(access_token),
            },
        )

    def post_form_request(self, path: str, params: Mapping[str, str], access_token: str) -> _Call:
        """A versioned form ``POST /{version}/{path}``, the token in the body (never the URL)."""
        body = {**params, "access_token": access_token, **self.proof_params(access_token)}
        return _Call("POST", f"{self.base_url}/{self.api_version}/{path}", {"data": body})

    def events_url(self, pixel_id: str | int) -> str:
        pixel = str(pixel_id)
        if not pixel.isascii() or not pixel.isdigit():
            raise ValueError("pixel_id must be the numeric pixel or dataset id")
        return f"{self.base_url}/{self.api_version}/{pixel}/events"

    def events_body(
        self,
        events: Sequence[EventInput],
        *,
        access_token: str,
        test_event_code: str | None,
        partner_agent: str | None,
        namespace_id: str | None,
        upload_id: str | None,
        upload_tag: str | None,
        upload_source: str | None,
    ) -> bytes:
        if not events:
            raise ValueError("send_events needs at least one event")
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise ValueError(
                f"{len(events)} events in one request; Meta accepts at most "
                f"{MAX_EVENTS_PER_REQUEST}: split the batch"
            )
        if not access_token:
            raise ValueError("access_token is required")
        optional = {
            "test_event_code": test_event_code,
            "partner_agent": partner_agent or self.partner_agent,
            "namespace_id": namespace_id,
            "upload_id": upload_id,
            "upload_tag": upload_tag,
            "upload_source": upload_source,
        }
        params: dict[str, Any] = {k: v for k, v in optional.items() if v is not None}
        params["access_token"] = access_token
        if self.app_secret:
            params["appsecret_proof"] = appsecret_proof(self.app_secret, access_token)
        return encode_events_body(events, params)

    def auth_headers(self, access_token: str) -> dict[str, str]:
        # GETs carry the token in a header (Graph accepts "OAuth <token>") to keep it
        # out of the URL; appsecret_proof is not a secret and may ride in the query.
        return {"Authorization": f"OAuth {access_token}"}

    def proof_params(self, access_token: str) -> dict[str, str]:
        if not self.app_secret:
            return {}
        return {"appsecret_proof": appsecret_proof(self.app_secret, access_token)}

    def read_events_response(self, response: httpx.Response, access_token: str) -> EventsResponse:
        payload = _read_json(response, access_token)
        received = payload.get("events_received")
        if not isinstance(received, int):
            raise GraphError(
                status=response.status_code,
                message="success response without events_received",
            )
        messages = payload.get("messages") or []
        fbtrace_id = payload.get("fbtrace_id")
        return EventsResponse(
            events_received=received,
            messages=[str(m) for m in messages] if isinstance(messages, list) else [],
            fbtrace_id=fbtrace_id if isinstance(fbtrace_id, str) else None,
        )


def _read_json(response: httpx.Response, access_token: str) -> dict[str, Any]:
    """The JSON object of a successful response, or the GraphError it describes."""
    body = response.content
    if not response.is_success:
        raise GraphError.from_response(
            response.status_code, response.headers, body, secrets=(access_token,)
        )
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict) or "error" in payload:
        raise GraphError.from_response(
            response.status_code, response.headers, body, secrets=(access_token,)
        )
    return payload


def _client_options(timeout: float, transport: Any) -> dict[str, Any]:
    return {
        "timeout": httpx.Timeout(timeout),
        "limits": DEFAULT_LIMITS,
        "transport": transport,
        "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
        "follow_redirects": False,
    }


_JSON_HEADERS = {"Content-Type": "application/json"}


def _dataset_quality_params(
    dataset_id: str | int, fields: str, agent_name: str | None
) -> dict[str, str]:
    params = {"dataset_id": str(dataset_id), "fields": fields}
    if agent_name:
        params["agent_name"] = agent_name
    return params


def _da_checks_params(connection_method: str, checks: Sequence[str] | None) -> dict[str, str]:
    if connection_method not in _pixel.CONNECTION_METHODS:
        raise ValueError(f"connection_method must be one of {', '.join(_pixel.CONNECTION_METHODS)}")
    params = {"connection_method": connection_method}
    if checks:
        params["checks"] = orjson.dumps(list(checks)).decode()
    return params


def _pixel_path(pixel_id: str | int, edge: str = "") -> str:
    pixel = str(pixel_id)
    if not pixel.isascii() or not pixel.isdigit():
        raise ValueError("pixel_id must be the numeric pixel or dataset id")
    return f"{pixel}/{edge}" if edge else pixel


MAX_STATS_PAGES = 20


@contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    """Timeouts and connection failures as :class:`GraphError` naming the address they
    happened at (scheme, host and port of ``url``: never a token, path or query)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise GraphError.transport("timeout", exc, url=url) from None
    except httpx.TransportError as exc:
        raise GraphError.transport("connection error", exc, url=url) from None


class GraphClient:
    """Async Conversions API client; one ``httpx.AsyncClient`` (keep-alive pool) per instance.

    Use as ``async with GraphClient() as client:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        api_version: str = DEFAULT_API_VERSION,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        app_secret: str | None = None,
        partner_agent: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._builder = _RequestBuilder(
            api_version=api_version,
            base_url=base_url,
            app_secret=app_secret,
            partner_agent=partner_agent,
        )
        self._http = httpx.AsyncClient(**_client_options(timeout, transport))

    @property
    def api_version(self) -> str:
        return self._builder.api_version

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send_events(
        self,
        pixel_id: str | int,
        events: Sequence[EventInput],
        *,
        access_token: str,
        test_event_code: str | None = None,
        partner_agent: str | None = None,
        namespace_id: str | None = None,
        upload_id: str | None = None,
        upload_tag: str | None = None,
        upload_source: str | None = None,
    ) -> EventsResponse:
        """POST up to 1,000 events; raises :class:`GraphError` on any failure."""
        call = self._builder.events_request(
            pixel_id,
            events,
            access_token=access_token,
            test_event_code=test_event_code,
            partner_agent=partner_agent,
            namespace_id=namespace_id,
            upload_id=upload_id,
            upload_tag=upload_tag,
            upload_source=upload_source,
        )
        response = await self._send(call)
        result = self._builder.read_events_response(response, access_token)
        # Meta counting fewer events than were sent is worth a warning (the request itself
        # succeeded, so nothing raises); the delivery engine also counts it in a metric.
        logger.log(
            logging.DEBUG if result.events_received >= len(events) else logging.WARNING,
            "pixel %s: %d of %d events received (fbtrace_id=%s)",
            pixel_id,
            result.events_received,
            len(events),
            result.fbtrace_id,
        )
        return result

    async def debug_token(self, input_token: str, *, access_token: str) -> dict[str, Any]:
        """``GET /debug_token``: validity, expiry and scopes of ``input_token``.

        Graph only takes ``input_token`` as a query parameter, so it is the one token
        that appears in a URL; the caller's own token rides in the header.
        """
        return await self._get("debug_token", {"input_token": input_token}, access_token)

    async def dataset_quality(
        self,
        dataset_id: str | int,
        *,
        access_token: str,
        fields: str = DEFAULT_DATASET_QUALITY_FIELDS,
        agent_name: str | None = None,
    ) -> dict[str, Any]:
        """``GET /{version}/dataset_quality``: EMQ and key coverage per event name."""
        params = _dataset_quality_params(dataset_id, fields, agent_name)
        return await self._get("dataset_quality", params, access_token)

    async def pixel_settings(self, pixel_id: str | int, *, access_token: str) -> AdsPixelSettings:
        """``GET /{pixel_id}``: Automatic Advanced Matching and first-party cookie settings."""
        answer = await self._get(
            _pixel_path(pixel_id), {"fields": _pixel.PIXEL_SETTINGS_FIELDS}, access_token
        )
        return _pixel.parse_pixel_settings(str(pixel_id), answer)

    async def update_pixel_settings(
        self,
        pixel_id: str | int,
        *,
        access_token: str,
        enable_automatic_matching: bool | None = None,
        automatic_matching_fields: Sequence[str] | None = None,
        first_party_cookie_status: str | None = None,
    ) -> dict[str, Any]:
        """``POST /{pixel_id}`` with the given settings; Graph answers ``{"success": true}``."""
        params = _pixel.pixel_update_params(
            enable_automatic_matching=enable_automatic_matching,
            automatic_matching_fields=automatic_matching_fields,
            first_party_cookie_status=first_party_cookie_status,
        )
        call = self._builder.post_form_request(_pixel_path(pixel_id), params, access_token)
        return _read_json(await self._send(call), access_token)

    async def da_checks(
        self,
        pixel_id: str | int,
        *,
        access_token: str,
        connection_method: str = "SERVER",
        checks: Sequence[str] | None = None,
    ) -> list[DACheck]:
        """``GET /{pixel_id}/da_checks``: the pixel's diagnostics checks and their results."""
        params = _da_checks_params(connection_method, checks)
        answer = await self._get(_pixel_path(pixel_id, "da_checks"), params, access_token)
        return _pixel.parse_da_checks(answer)

    async def pixel_stats(
        self,
        pixel_id: str | int,
        *,
        access_token: str,
        aggregation: str,
        start_time: float,
        end_time: float,
        event_source: str | None = None,
    ) -> list[StatsBucket]:
        """``GET /{pixel_id}/stats``: hourly counts by ``aggregation``, all pages."""
        params = _pixel.stats_params(aggregation, start_time, end_time, event_source)
        buckets: list[StatsBucket] = []
        for _page in range(MAX_STATS_PAGES):
            answer = await self._get(_pixel_path(pixel_id, "stats"), params, access_token)
            buckets.extend(_pixel.parse_stats(answer))
            after = _pixel.next_cursor(answer)
            if after is None:
                break
            params = {**params, "after": after}
        return buckets

    async def _get(self, path: str, params: dict[str, str], access_token: str) -> dict[str, Any]:
        response = await self._send(self._builder.get_request(path, params, access_token))
        return _read_json(response, access_token)

    async def _send(self, call: _Call) -> httpx.Response:
        request = self._http.build_request(call.method, call.url, **call.options)
        with _transport_errors(call.url):
            return await self._http.send(request)
