"""The dashboard's pages and actions: one method per route, each guarded the same way.

Every request passes :meth:`Views.guard` first: no valid credential means a
redirect to the login form (pages) or 401 (actions and basic-auth setups);
every POST must also carry the CSRF token of its principal and must not come
from another origin (:mod:`capirelay.dashboard.csrf`).  Actions follow
Post/Redirect/Get, reporting their outcome as counts in the redirect's query
string, so a reload never repeats a replay or a purge.

Pages read shared state (queue, dead letters) from the outbox and per-process
history from :mod:`capirelay.dashboard.stats`; they show wire events only
(identifiers already hashed) and never a token.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from capirelay.config import Settings
from capirelay.dashboard import charts, sessions
from capirelay.dashboard.auth import SESSION_COOKIE, SESSION_TTL_SECONDS, DashboardAuth, Principal
from capirelay.dashboard.csrf import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    csrf_token,
    login_token,
    same_origin,
    verify_csrf,
    verify_login_token,
)
from capirelay.dashboard.meta import MetaView
from capirelay.dashboard.stats import (
    DEADLINE_WINDOW_SECONDS,
    ActivityRecorder,
    DeliveryLog,
    histogram_summary,
    overview_rows,
    percentile,
)
from capirelay.delivery.engine import DeliveryEngine
from capirelay.graph import RetryClass, explain
from capirelay.graph.errors import meta_says_of
from capirelay.metrics import Metrics
from capirelay.ops.health import version_health
from capirelay.ops.quality import GOOD_SCORE, MATCH_KEYS, predict_match_quality
from capirelay.outbox import Outbox
from capirelay.outbox.views import views_of

__all__ = ["Views"]

PREFIX: Final = "/ui"
QUALITY_SAMPLE_QUEUED: Final = 500
CHART_MINUTES: Final = 60
MIN_CHART_MINUTES: Final = 15
MAX_FORM_BYTES: Final = 16 * 1024
MAX_FORM_FIELDS: Final = 32
_PAGE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

_PAGE_HEADERS: Final = {
    "content-security-policy": _PAGE_CSP,
    # The gateway's default "no-referrer" makes browsers send "Origin: null" on form posts.
    "referrer-policy": "same-origin",
}

Handler = Callable[[Request, Principal], Awaitable[Response]]


class Views:
    """Route handlers bound to one gateway's settings, metrics and dashboard state."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        auth: DashboardAuth,
        recorder: ActivityRecorder,
        deliveries: DeliveryLog,
        meta: MetaView,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.auth = auth
        self.recorder = recorder
        self.deliveries = deliveries
        self.meta = meta
        self.clock = clock
        self.login_throttle = sessions.LoginThrottle()
        self.templates = Environment(
            loader=PackageLoader("capirelay.dashboard", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            ago=self._ago,
            utc=_utc,
            seconds=_seconds,
            pct=_pct,
            jsonpretty=_json_pretty,
            delivery=_delivery_label,
            skew=_skew,
            meta_says=meta_says_of,
        )

    # ----------------------------------------------------------------- guard

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page or action handler with authentication (and CSRF for POST)."""

        async def endpoint(request: Request) -> Response:
            # A token or password in a header is a guess like the login form's: the same
            # throttle counts it (5 wrong in a minute lock the client out of both).
            client = None
            if self.auth.presents_credential(request):
                client = sessions.client_key(request, self.settings.trusted_proxies)
                wait = self.login_throttle.retry_after(client)
                if wait is not None:
                    return _plain(
                        429,
                        "too many wrong credentials: wait a minute, then try again",
                        {"Retry-After": str(math.ceil(wait))},
                    )
            principal = await self._principal(request)
            if client is not None:
                if principal is None:
                    self.login_throttle.failed(client)
                elif principal.kind in ("bearer", "basic"):
                    self.login_throttle.succeeded(client)
                # A login session let it in: the header was not what the caller relied on.
            if principal is None:
                return self._unauthenticated(request)
            if request.method == "POST":
                form = await read_form(request)
                if form is None or not self._csrf_ok(request, principal, form):
                    return _plain(403, "refused: missing or invalid CSRF token")
            return await handler(request, principal)

        return endpoint

    async def _principal(self, request: Request) -> Principal | None:
        """The authenticated caller; a session ended by logout (on any replica) is none."""
        principal = self.auth.authenticate(request)
        if principal is not None and await sessions.is_revoked(request.app.state.outbox, principal):
            return None
        return principal

    def _csrf_ok(self, request: Request, principal: Principal, form: Mapping[str, str]) -> bool:
        key = self.auth.signing_key()
        return (
            key is not None
            and same_origin(request)
            and verify_csrf(key, principal, form.get(CSRF_FIELD))
        )

    def _unauthenticated(self, request: Request) -> Response:
        if request.method == "GET" and self.auth.has_login_form:
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        headers = (
            {} if self.auth.has_login_form else {"WWW-Authenticate": 'Basic realm="capirelay"'}
        )
        return _plain(401, "authentication required", headers)

    def render(
        self, request: Request, principal: Principal | None, name: str, **context: Any
    ) -> HTMLResponse:
        key = self.auth.signing_key()
        token = csrf_token(key, principal) if key is not None and principal else ""
        html = self.templates.get_template(name).render(
            prefix=PREFIX,
            csrf_field=CSRF_FIELD,
            csrf=token,
            principal=principal,
            path=request.url.path,
            now=self.clock(),
            **context,
        )
        return HTMLResponse(html, headers=_PAGE_HEADERS)

    # ----------------------------------------------------------------- login

    async def login_form(self, request: Request) -> Response:
        if not self.auth.has_login_form:
            return self._unauthenticated(request)
        if await self._principal(request) is not None:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        return self._login_page(request, error=None, status=200)

    async def login(self, request: Request) -> Response:
        key = self.auth.signing_key()
        if not self.auth.has_login_form or key is None:
            return self._unauthenticated(request)
        form = await read_form(request)
        if (
            form is None
            or not same_origin(request)
            or not verify_login_token(key, request.cookies.get(LOGIN_COOKIE), form.get(CSRF_FIELD))
        ):
            return _plain(403, "refused: missing or invalid CSRF token")
        client = sessions.client_key(request, self.settings.trusted_proxies)
        wait = self.login_throttle.retry_after(client)
        if wait is not None:
            response = self._login_page(
                request, error="Too many wrong tokens: wait a minute, then try again.", status=429
            )
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        if not self.auth.check_admin_token(form.get("token", "").strip()):
            self.login_throttle.failed(client)
            return self._login_page(request, error="That token is not right.", status=401)
        self.login_throttle.succeeded(client)
        session = self.auth.new_session()
        if session is None:
            return self._unauthenticated(request)
        cookie, _ = session
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_TTL_SECONDS,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    def _login_page(self, request: Request, *, error: str | None, status: int) -> Response:
        key = self.auth.signing_key()
        nonce = secrets.token_urlsafe(18)
        response = self.render(
            request,
            None,
            "login.html",
            error=error,
            login_csrf=login_token(key, nonce) if key is not None else "",
        )
        response.status_code = status
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=900,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request, principal: Principal) -> Response:
        await sessions.revoke(request.app.state.outbox, principal, now=self.clock())
        response = RedirectResponse(
            f"{PREFIX}/login" if self.auth.has_login_form else f"{PREFIX}/", status_code=303
        )
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # -------------------------------------------------------------- overview

    async def overview(self, request: Request, principal: Principal) -> Response:
        outbox, engine = _shared(request)
        self.recorder.sample()
        now = self.clock()
        stats = await outbox.stats(now=now)
        queue = await views_of(outbox).queue_breakdown(now=now)
        letters = await views_of(outbox).dlq_breakdown()
        pixels = overview_rows(
            self.settings.pixels,
            self.recorder.totals(),
            self.recorder.window_totals(CHART_MINUTES),
            queue,
            letters,
        )
        latency = {
            p.pixel_id: {
                "graph": histogram_summary(self.metrics.send_latency, p.pixel_id),
                "end_to_end_p50": percentile(self.deliveries.latencies(p.pixel_id), 0.5),
                "end_to_end_p95": percentile(self.deliveries.latencies(p.pixel_id), 0.95),
            }
            for p in pixels
        }
        return self.render(
            request,
            principal,
            "overview.html",
            pixels=pixels,
            latency=latency,
            breakers={pid: s.breaker for pid, s in engine.status().items()},
            stats=stats,
            deadline_window=DEADLINE_WINDOW_SECONDS,
            throughput=self._throughput_chart(),
            errors_chart=self._errors_chart(),
            since=self.recorder.started_at,
        )

    def _chart_minutes(self) -> int:
        """A young process gets a short axis, so its first minutes are not a spike at the edge."""
        age_minutes = math.ceil((self.clock() - self.recorder.started_at) / 60) + 1
        return min(max(age_minutes, MIN_CHART_MINUTES), CHART_MINUTES)

    def _throughput_chart(self) -> Any:
        minutes = self._chart_minutes()
        series = [
            charts.Series(label, self.recorder.series(outcome, minutes=minutes))
            for label, outcome in (
                ("received", "received"),
                ("sent to Meta", "sent"),
                ("deduplicated", "duplicate"),
            )
        ]
        return charts.line_chart(series, title=f"Throughput, last {_span(minutes)}")

    def _errors_chart(self) -> Any:
        minutes = self._chart_minutes()
        series = [
            charts.Series(label, self.recorder.series(outcome, minutes=minutes))
            for label, outcome in (
                ("rejected at ingest", "rejected"),
                ("Graph errors", "graph_errors"),
                ("dead-lettered", "dead_lettered"),
            )
        ]
        return charts.bar_chart(series, title=f"Errors, last {_span(minutes)}")

    # ---------------------------------------------------------------- errors

    async def errors(self, request: Request, principal: Principal) -> Response:
        outbox, engine = _shared(request)
        self.recorder.sample()
        groups: dict[tuple[int | None, int | None], dict[str, Any]] = {}
        for group in await views_of(outbox).dlq_breakdown():
            entry = groups.setdefault(
                (group.code, group.subcode),
                {
                    "code": group.code,
                    "subcode": group.subcode,
                    "explanation": _explain_group(group.code, group.subcode, group.reason),
                    "count": 0,
                    "rows": [],
                },
            )
            entry["count"] += group.count
            entry["rows"].append(group)
        return self.render(
            request,
            principal,
            "errors.html",
            groups=sorted(groups.values(), key=lambda g: -g["count"]),
            graph_errors=self._graph_error_counts(),
            rejected=self._counter_details("rejected"),
            last_errors={
                pid: (
                    s.last_error,
                    explain(
                        s.last_error.code,
                        s.last_error.subcode,
                        s.last_error.status,
                        retry_class=s.last_error.retry_class,
                    ),
                )
                for pid, s in engine.status().items()
                if s.last_error is not None
            },
            errors_chart=self._errors_chart(),
        )

    def _graph_error_counts(self) -> list[dict[str, Any]]:
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for (outcome, pixel, _name, detail), value in self.recorder.totals().items():
            if outcome != "graph_errors" or not value:
                continue
            code_text, subcode_text, class_text = [*detail.split("/", 2), "", ""][:3]
            code, subcode = _int_or_none(code_text), _int_or_none(subcode_text)
            rows[(pixel, detail)] = {
                "pixel_id": pixel,
                "code": code,
                "subcode": subcode,
                "count": int(value),
                "explanation": explain(code, subcode, retry_class=class_text or None),
            }
        return sorted(rows.values(), key=lambda r: -r["count"])

    def _counter_details(self, outcome: str) -> list[tuple[str, str, int]]:
        return sorted(
            (
                (pixel, detail, int(value))
                for (out, pixel, _name, detail), value in self.recorder.totals().items()
                if out == outcome and value
            ),
            key=lambda row: -row[2],
        )

    # ----------------------------------------------------------- test events

    async def test_events(self, request: Request, principal: Principal) -> Response:
        test_events = list(reversed(self.deliveries.test_events))
        recent = list(reversed(self.deliveries.recent))[:50]
        return self.render(
            request,
            principal,
            "test_events.html",
            test_events=test_events,
            recent=recent,
            test_codes={pid: p.test_event_code for pid, p in self.settings.pixels.items()},
        )

    # --------------------------------------------------------- match quality

    async def quality(self, request: Request, principal: Principal) -> Response:
        outbox, _ = _shared(request)
        by_pixel: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in self.deliveries.recent:
            by_pixel[event.pixel_id].append(event.wire())
        for queued in await views_of(outbox).queue_sample(limit=QUALITY_SAMPLE_QUEUED):
            decoded = orjson.loads(queued.payload)
            if isinstance(decoded, dict):
                by_pixel[queued.pixel_id].append(decoded)
        reports = {pid: predict_match_quality(sample) for pid, sample in by_pixel.items()}
        pixel_ids = sorted({*self.settings.pixels, *reports})
        emq = {pid: await self.meta.emq(pid) for pid in pixel_ids if pid in self.settings.pixels}
        return self.render(
            request,
            principal,
            "quality.html",
            pixel_ids=pixel_ids,
            reports=reports,
            samples={pid: len(sample) for pid, sample in by_pixel.items()},
            emq=emq,
            keys=[key.name for key in MATCH_KEYS],
            good_score=GOOD_SCORE,
        )

    # ---------------------------------------------------------------- health

    async def health(self, request: Request, principal: Principal) -> Response:
        outbox, engine = _shared(request)
        now = self.clock()
        stats = await outbox.stats(now=now)
        return self.render(
            request,
            principal,
            "health.html",
            statuses=engine.status(),
            tokens=await self.meta.tokens(),
            versions=version_health(self.settings),
            probe=await self.meta.probe(),
            pixel_settings=await self.meta.pixel_settings(),
            storage_ok=await outbox.ping(),
            stats=stats,
            explain=explain,
            deadline_window=DEADLINE_WINDOW_SECONDS,
        )

    # ------------------------------------------------------------- formatting

    def _ago(self, ts: float | None) -> str:
        if ts is None:
            return "—"
        return _seconds(self.clock() - ts) + " ago"


async def read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form of a POST (the only kind the pages send); ``None`` when unreadable.

    Read here rather than with ``request.form()``: that needs python-multipart for a
    format these forms never use.  Starlette caches the body, so reading twice is free.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("", "application/x-www-form-urlencoded"):
        return None
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


def _shared(request: Request) -> tuple[Outbox, DeliveryEngine]:
    return request.app.state.outbox, request.app.state.engine


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain", headers=headers)


def _explain_group(code: int | None, subcode: int | None, reason: str) -> str:
    if code is None and reason == "expired":
        return (
            "The event's deadline (event_time + 7 days, 62 for physical_store) passed before "
            "Meta accepted it; it can no longer be delivered. Fix what kept it queued "
            "(token, outage) so others do not follow."
        )
    if code is None and reason == "rejected":
        return "The event failed local re-validation; fix the mapping and send it again."
    # A dead letter's Meta error was the event's own (invalid) or a setup refusal that
    # named it (config): never a transient failure, whatever the code alone suggests.
    return explain(code, subcode, retry_class=_DEAD_LETTER_CLASS.get(reason))


_DEAD_LETTER_CLASS: dict[str, RetryClass] = {
    "invalid": RetryClass.INVALID,
    "config": RetryClass.CONFIG,
}


# A number in a query string or a path: ASCII digits, at most 18 of them (below 2**63,
# what SQLite's INTEGER and PostgreSQL's bigint hold).  str.isdigit() also takes "²",
# which int() refuses, and any length, which both backends refuse as an OFFSET: a 500.
_INTEGER: Final = re.compile(r"-?[0-9]{1,18}")


def _int_or_none(value: Any) -> int | None:
    """``value`` as an int when it is one, or a string that is one within range; else None
    (a filter or count that is not a number is ignored, as if absent)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        # The digits as matched: str.strip() also drops U+001C-U+001F, which int() refuses.
        text = value.strip(" \t")
        if _INTEGER.fullmatch(text):
            return int(text)
    return None


def _utc(ts: float | None) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    value = max(value, 0.0)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


_DELIVERY_LABELS: Final = {
    "closed": "delivering",
    "open": "paused: token or setup error",
    "half_open": "probing",
    "unconfigured": "no access token",
}


def _span(minutes: int) -> str:
    return "hour" if minutes == 60 else f"{minutes} minutes"


def _delivery_label(breaker: str) -> str:
    """The breaker state in words a marketer's engineer reads without knowing the pattern."""
    return _DELIVERY_LABELS.get(str(breaker), str(breaker))


def _skew(seconds: float) -> str:
    rounded = round(seconds)
    return "0 s" if rounded == 0 else f"{rounded:+d} s"


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.0f}%"


def _json_pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
