"""``capirelay doctor``: every way the gateway can quietly stop delivering, checked in one go.

Deliveries fail for reasons that live outside the code: a revoked token, a
Graph API version past its sunset, a clock that drifted, a queue nobody is
draining, a mapping that sends malformed ``fbc`` values.  Each check here is a
small function that turns facts into a :class:`Check` (``ok``/``warn``/``fail``,
what was seen, and the fix), so the dashboard can render the same verdicts;
:func:`run_doctor` gathers the facts (config, the outbox read directly, Graph)
and calls them all.  Whether the gateway itself is running does not matter.

Verdicts: ``fail`` means events are being lost or will be (a human must act);
``warn`` means something degrades delivery or match quality or will break
later.  ``capirelay doctor`` exits 1 on any fail (and on a warn with ``--strict``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from capirelay.config import ConfigError, Settings, after_token_fix, load_settings
from capirelay.graph import DEFAULT_BASE_URL, explain
from capirelay.graph.errors import TOKEN_ERROR_CODES, code_label, graph_address
from capirelay.graph.versions import DEFAULT_API_VERSION, VersionStatus
from capirelay.meta_facts import CODE_UNKNOWN_PATH
from capirelay.ops.health import (
    GRAPH_URL_FIX,
    SEND_SCOPES,
    TOKEN_EXPIRY_FAIL_DAYS,
    TOKEN_EXPIRY_WARN_DAYS,
    GraphProbe,
    TokenHealth,
    probe_graph,
    token_health,
    version_health,
)
from capirelay.ops.preflight import Finding, test_event_code_findings, webhook_secret_findings
from capirelay.ops.quality import GOOD_SCORE, QualityReport, predict_match_quality
from capirelay.outbox import DLQFilter, Outbox, QueueStats, open_outbox, sqlite_path_from_url
from capirelay.outbox.base import DLQGroup
from capirelay.outbox.views import views_of

__all__ = [
    "BACKLOG_FAIL_SECONDS_TO_DEADLINE",
    "BACKLOG_WARN_AGE_SECONDS",
    "CLOCK_WARN_SECONDS",
    "DLQ_RECENT_WINDOW_SECONDS",
    "TOKEN_EXPIRY_FAIL_DAYS",
    "TOKEN_EXPIRY_WARN_DAYS",
    "Check",
    "DoctorReport",
    "Status",
    "backlog_check",
    "beacon_checks",
    "clock_check",
    "config_checks",
    "dlq_check",
    "error_class_checks",
    "graph_check",
    "match_quality_checks",
    "run_doctor",
    "storage_check",
    "test_event_checks",
    "token_checks",
    "version_checks",
]

# Meta asks for events "ideally within an hour" of when they happen.
BACKLOG_WARN_AGE_SECONDS = 3600
# Less than a day before the most urgent queued event can no longer be delivered.
BACKLOG_FAIL_SECONDS_TO_DEADLINE = 24 * 3600
DLQ_RECENT_WINDOW_SECONDS = 24 * 3600
CLOCK_WARN_SECONDS = 30
SAMPLE_SIZE = 500
DLQ_RECENT_SCAN = 10_000
MAX_HINTS_PER_CHECK = 3


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


_RANK = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: ``detail`` says what was seen, ``fix`` what to do (None when ok)."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(slots=True)
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default=Status.OK)

    def exit_code(self, *, strict: bool = False) -> int:
        """1 when a human must act (any fail, or any warn under ``strict``), else 0."""
        if self.status is Status.FAIL or (strict and self.status is Status.WARN):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "checks": [c.to_dict() for c in self.checks]}


# ----------------------------------------------------------------- pure checks


def _webhook_checks(settings: Settings) -> list[Check]:
    """What ``serve`` would refuse to start on among the webhooks (a mapping file that does
    not load, an unknown preset or pixel), by the resolution ``serve`` runs itself."""
    from capirelay.sources.webhooks.configured import load_webhooks

    try:
        load_webhooks(settings)
    except ConfigError as exc:
        return [
            Check(
                "config",
                Status.FAIL,
                problem.strip(),
                "fix it in the config or the mapping file (a relative mapping path is read "
                "from the config file's directory); `capirelay mapping test` names each "
                "problem of a mapping",
            )
            for problem in str(exc).splitlines()[1:]
        ]
    return []


def config_checks(settings: Settings) -> list[Check]:
    """No pixels is a fail (nothing can be delivered); each settings warning is a warn."""
    checks: list[Check] = []
    if not settings.pixels:
        checks.append(
            Check(
                "config",
                Status.FAIL,
                "no pixels configured",
                "add a [pixels.<PIXEL_ID>] table with an access_token to capirelay.toml",
            )
        )
    warnings = settings.warnings()
    for message in warnings:
        subject, _, fix = message.partition("; ")
        checks.append(Check("config", Status.WARN, subject, fix or None))
    checks.extend(_webhook_checks(settings))
    if not checks:
        checks.append(Check("config", Status.OK, f"{len(settings.pixels)} pixel(s) configured"))
    return checks


def beacon_checks(settings: Settings) -> list[Check]:
    """A warn per pixel that takes browser events (``beacon_events`` not ``[]``) from no
    origin: every beacon a page sends it is answered 403 ``origin_not_allowed``."""
    taking = {pid: p for pid, p in settings.pixels.items() if p.beacon_events != []}
    checks = [
        Check(
            "beacon",
            Status.WARN,
            f"pixels.{pixel_id}.allowed_origins is empty: every browser event for pixel "
            f"{pixel_id} (capirelay.js, POST /v1/collect) is refused with 403 "
            "origin_not_allowed",
            f"list your site's origins under [pixels.{pixel_id}], e.g. allowed_origins = "
            '["https://shop.example"], and restart the gateway; or set beacon_events = [] '
            "if this pixel takes no browser events",
        )
        for pixel_id, pixel in taking.items()
        if not pixel.allowed_origins
    ]
    if not checks and taking:
        checks.append(
            Check(
                "beacon",
                Status.OK,
                f"{len(taking)} pixel(s) take browser events from their origins",
            )
        )
    elif not checks and settings.pixels:
        checks.append(Check("beacon", Status.OK, "off: no pixel takes browser events"))
    return checks


def credential_checks(settings: Settings) -> list[Check]:
    """Ingest keys and the dashboard credential: configured, and readable right now."""
    checks: list[Check] = []
    if not settings.ingest_keys:
        checks.append(
            Check(
                "ingest keys",
                Status.OK,
                "none configured: POST /v1/events refuses server-to-server events (fine when "
                "only the browser beacon and webhooks send; capirelay init writes one)",
            )
        )
    unreadable = [
        f"ingest_keys.{name}.key ({key.key.describe()})"
        for name, key in settings.ingest_keys.items()
        if key.key.resolve() is None
    ]
    for where in unreadable:
        checks.append(
            Check(
                "ingest keys",
                Status.FAIL,
                f"{where} is missing or empty",
                "create the file / set the variable: requests with this key are refused",
            )
        )
    if settings.ingest_keys and not unreadable:
        checks.append(
            Check("ingest keys", Status.OK, f"{len(settings.ingest_keys)} key(s) set and readable")
        )
    checks.extend(_webhook_secret_checks(settings))
    checks.append(_dashboard_check(settings))
    return checks


def _webhook_secret_checks(settings: Settings) -> list[Check]:
    """Each webhook's signing secret, readable right now (else its deliveries get 503)."""
    missing = [_verdict(finding) for finding in webhook_secret_findings(settings)]
    if settings.webhooks and not missing:
        return [
            Check(
                "webhooks",
                Status.OK,
                f"{len(settings.webhooks)} signing secret(s) set and readable",
            )
        ]
    return missing


def test_event_checks(settings: Settings) -> list[Check]:
    """A warn per test_event_code left in the settings (a pixel's or a webhook's)."""
    return [_verdict(finding) for finding in test_event_code_findings(settings)]


def _verdict(finding: Finding) -> Check:
    status = Status.FAIL if finding.blocking else Status.WARN
    return Check(finding.check, status, finding.detail, finding.fix)


def _dashboard_check(settings: Settings) -> Check:
    dashboard = settings.dashboard
    secret = dashboard.admin_token or dashboard.basic_password
    if secret is None:
        return Check(
            "dashboard",
            Status.OK,
            "off (no [dashboard] admin_token): /ui/ answers 404",
        )
    name = "admin_token" if dashboard.admin_token is not None else "basic_password"
    if secret.resolve() is None:
        return Check(
            "dashboard",
            Status.FAIL,
            f"dashboard.{name} ({secret.describe()}) is missing or empty: nobody can sign in",
            "create the file / set the variable, or remove [dashboard] to turn the UI off",
        )
    return Check("dashboard", Status.OK, f"on at /ui/; dashboard.{name} is set and readable")


def storage_check(storage_url: str, error: str | None) -> Check:
    kind = storage_url.split(":", 1)[0]
    if error is None:
        return Check("storage", Status.OK, f"{kind} outbox answers")
    return Check(
        "storage",
        Status.FAIL,
        f"{kind} outbox unavailable: {error}",
        "check the storage setting, the disk (space, permissions) or the database server; "
        "ingest answers 503 until it is back",
    )


# Where Meta's Graph API answers (the default graph_url's host).
META_GRAPH_HOST = urlsplit(DEFAULT_BASE_URL).hostname


def graph_check(probe: GraphProbe, graph_url: str) -> Check:
    # Named by its address only: a forwarding proxy's URL may hold a user and password.
    address = graph_address(graph_url)
    if probe.reachable and probe.not_graph is not None:
        # Something answered, but not Graph: a web server, a portal, a proxy's own page.
        return Check(
            "graph",
            Status.FAIL,
            f"{address} answered, but not as Graph: {probe.not_graph}",
            GRAPH_URL_FIX + "; events wait in the queue until their deadline",
        )
    if probe.reachable:
        latency = f" in {probe.latency_ms:.0f} ms" if probe.latency_ms is not None else ""
        return Check(
            "graph",
            Status.OK,
            f"reached {address}{latency} (a token-less probe; Graph's error answer, here "
            f"{probe.status}, proves the network path to Graph works)",
        )
    host = urlsplit(graph_url).hostname or graph_url
    if host == META_GRAPH_HOST:
        fix = f"allow outbound HTTPS to {META_GRAPH_HOST} (firewall, proxy, DNS)"
    else:
        # graph_url names something else: a local emulator, a proxy, a test double.
        fix = (
            f"graph_url points at {host}, not Meta's {META_GRAPH_HOST}: check that it runs "
            f"and this host can reach it (capirelay's emulator: `capirelay emulator`), or "
            f"remove graph_url to send to Meta"
        )
    return Check(
        "graph",
        Status.FAIL,
        f"{address} unreachable ({probe.error})",
        fix + "; events wait in the queue until their deadline",
    )


def clock_check(
    skew: float | None, max_future_skew: int, *, reachable: bool = True, from_graph: bool = True
) -> Check:
    """Meta judges event_time by its own clock: skew beyond the accepted window loses events.

    ``from_graph`` False: the answer came from something else, whose clock says
    nothing about Graph's (``skew`` is then None).
    """
    if skew is None:
        if not reachable:
            detail = "Graph did not answer"
        elif not from_graph:
            detail = "the server at graph_url is not Graph (see graph), so its clock proves nothing"
        else:
            detail = "Graph sent no Date header"
        return Check("clock", Status.WARN, f"clock skew unknown: {detail}", None)
    direction = "ahead of" if skew < 0 else "behind"
    detail = f"local clock is {abs(skew):.0f} s {direction} Graph's"
    if abs(skew) < 1:
        detail = "local clock agrees with Graph's (within 1 s)"
    fix = "synchronize the host clock with NTP (chrony or systemd-timesyncd)"
    if abs(skew) > max_future_skew:
        return Check("clock", Status.FAIL, detail, fix + "; events with skewed times are refused")
    if abs(skew) > CLOCK_WARN_SECONDS:
        return Check("clock", Status.WARN, detail, fix)
    return Check("clock", Status.OK, detail)


def token_checks(tokens: dict[str, TokenHealth], now: datetime | None = None) -> list[Check]:
    return [_token_check(health, now or datetime.now(UTC)) for health in tokens.values()]


def _token_check(health: TokenHealth, now: datetime) -> Check:
    name = f"token {health.pixel_id}"
    if not health.configured:
        return Check(name, Status.FAIL, health.error or "token invalid", health.explanation)
    if health.valid is False:
        # A permission error (3, 10, 200-299) is fixed by a grant: the token stays, and only
        # a new token (if one is generated) goes where the hint says.
        fix = _with_replace_hint(
            health.explanation, health, only_if_new=health.error_code not in TOKEN_ERROR_CODES
        )
        return Check(name, Status.FAIL, health.error or "token invalid", fix)
    if health.valid is None:
        # An unknown path (2500) fails every delivery as it failed this call; other
        # answers (an outage, a retired version reported below) say nothing either way.
        status = Status.FAIL if health.error_code == CODE_UNKNOWN_PATH else Status.WARN
        return Check(name, status, f"could not be checked: {health.error}", health.explanation)
    granted = [scope for scope in SEND_SCOPES if scope in health.scopes]
    if health.pixel_access is False and not granted:
        scopes = ", ".join(health.scopes) or "none listed"
        return Check(
            name,
            Status.FAIL,
            f"valid, but not granted {' or '.join(SEND_SCOPES)} (scopes: {scopes}), which "
            f"sending events to pixel {health.pixel_id} needs",
            f"generate a new token with the {SEND_SCOPES[0]} permission for the system user "
            "(Business Settings > Users > System users > Generate new token; a token keeps "
            "the permissions it was generated with); "
            + (health.replace_hint or f"put it in pixels.{health.pixel_id}.access_token"),
        )
    if health.pixel_access is False:
        grants = " and ".join(granted) + (" grants do" if len(granted) > 1 else " grant does")
        return Check(
            name,
            Status.FAIL,
            f"valid, but its {grants} not include pixel {health.pixel_id}",
            explain(100, 33),
        )
    days_left = health.days_left(now)
    expiry = "never expires" if days_left is None else f"expires in {days_left:.0f} days"
    detail = f"valid, {expiry}; scopes: {', '.join(health.scopes) or 'none listed'}"
    renew = _with_replace_hint(
        "generate a system-user token (they do not expire) in Business Settings, then", health
    )
    if days_left is not None and days_left < TOKEN_EXPIRY_FAIL_DAYS:
        return Check(name, Status.FAIL, detail, renew)
    if days_left is not None and days_left < TOKEN_EXPIRY_WARN_DAYS:
        return Check(name, Status.WARN, detail, renew)
    if health.scopes and not granted:
        return Check(name, Status.WARN, detail, f"grant the token's system user {SEND_SCOPES[0]}")
    return Check(name, Status.OK, detail)


def _with_replace_hint(
    fix: str | None, health: TokenHealth, *, only_if_new: bool = False
) -> str | None:
    """``fix``, then where the new token goes and whether the gateway must restart
    (``only_if_new``: the fix may keep the token, so the hint is for a new one only)."""
    if health.replace_hint is None:
        return fix
    if fix is None:
        return health.replace_hint
    if not only_if_new and fix.endswith("then"):
        return f"{fix} {health.replace_hint}"
    return f"{fix} {after_token_fix(health.replace_hint, new_token=not only_if_new)}"


def version_checks(versions: dict[str, VersionStatus]) -> list[Check]:
    status_of = {
        "ok": Status.OK,
        "near_sunset": Status.WARN,
        "unknown": Status.WARN,
        "expired": Status.FAIL,
    }
    checks = []
    for pixel_id, version in versions.items():
        status = status_of[version.state]
        fix = None
        if status is not Status.OK:
            fix = (
                f'set api_version = "{DEFAULT_API_VERSION}" in [pixels.{pixel_id}]; '
                "a retired version fails every call with error 2635"
            )
        checks.append(Check(f"api version {pixel_id}", status, _version_detail(version), fix))
    return checks


def _version_detail(version: VersionStatus) -> str:
    until = version.available_until.isoformat() if version.available_until else None
    if version.state == "expired" and until:
        return f"{version.version} was retired on {until}"
    if version.state == "near_sunset" and until:
        return f"{version.version} stops working on {until} ({version.days_left} days left)"
    return version.advice


def backlog_check(stats: QueueStats, now: float) -> Check:
    """Depth, age of the oldest queued event, and how close the most urgent one is to expiry."""
    if stats.depth == 0:
        return Check("backlog", Status.OK, "queue empty")
    age = now - stats.oldest_queued_at if stats.oldest_queued_at is not None else 0.0
    left = stats.earliest_deadline - now if stats.earliest_deadline is not None else None
    detail = f"{stats.depth} queued, oldest {_duration(age)} old"
    if left is not None:
        detail += f", most urgent expires in {_duration(left)}"
    fix = (
        "deliveries are not keeping up or are blocked: make sure `capirelay serve` is running, "
        "then fix any token, graph or version failure above; events past their deadline are "
        "dead-lettered as expired"
    )
    if left is not None and left < BACKLOG_FAIL_SECONDS_TO_DEADLINE:
        return Check("backlog", Status.FAIL, detail, fix)
    if age > BACKLOG_WARN_AGE_SECONDS:
        return Check("backlog", Status.WARN, detail, fix)
    return Check("backlog", Status.OK, detail)


def dlq_check(dlq_size: int, recent: int, window: float = DLQ_RECENT_WINDOW_SECONDS) -> Check:
    """A growing DLQ means events are being lost now; an old one means a decision is pending."""
    if dlq_size == 0:
        return Check("dead letters", Status.OK, "dead-letter queue empty")
    detail = f"{dlq_size} dead-lettered, {recent} in the last {_duration(window)}"
    if recent:
        return Check(
            "dead letters",
            Status.FAIL,
            detail,
            "events are being dead-lettered now: fix the causes listed under errors, then "
            "`capirelay dlq replay --since ...`",
        )
    return Check(
        "dead letters",
        Status.WARN,
        detail,
        "inspect with `capirelay dlq list`, then replay what can still be delivered or purge",
    )


_REASON_FIXES = {
    "expired": (
        "these events passed their deadline (event_time + 7 days) before Meta accepted them "
        "and cannot be sent; keep the queue drained (see backlog)"
    ),
    "rejected": (
        "these failed capirelay's own validation on replay: `capirelay dlq show ID` names the "
        "field; fix the source and resend"
    ),
}


def error_class_checks(groups: Iterable[DLQGroup]) -> list[Check]:
    """Dead letters grouped by Meta's code/subcode, largest first, each with its explanation."""
    by_class: dict[tuple[int | None, int | None, str], Counter[str]] = defaultdict(Counter)
    for group in groups:
        reason = group.reason if group.code is None else ""
        by_class[(group.code, group.subcode, reason)][group.event_name] += group.count
    checks = []
    for (code, subcode, reason), names in sorted(
        by_class.items(), key=lambda item: -item[1].total()
    ):
        label = reason if code is None else code_label(code, subcode)
        events = ", ".join(f"{name} x{n}" for name, n in names.most_common(4))
        fix = _REASON_FIXES.get(reason) if code is None else explain(code, subcode)
        checks.append(
            Check(
                f"errors {label}",
                Status.WARN,
                f"{names.total()} dead letters ({events})",
                fix or explain(code, subcode),
            )
        )
    return checks


def match_quality_checks(report: QualityReport) -> list[Check]:
    """Per event name: the predicted score against Meta's 6.0 target, with the top hints."""
    if report.overall.count == 0:
        return [Check("match quality", Status.OK, "no queued or dead-lettered events to sample")]
    checks = []
    for name, quality in report.by_event.items():
        detail = f"predicted {quality.score:.1f}/10 from {quality.count} sampled events"
        if quality.score >= GOOD_SCORE:
            checks.append(Check(f"match quality {name}", Status.OK, detail))
        else:
            hints = "; ".join(quality.hints[:MAX_HINTS_PER_CHECK]) or None
            checks.append(Check(f"match quality {name}", Status.WARN, detail, hints))
    return checks


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


# -------------------------------------------------------------- fact gathering


@dataclass(slots=True)
class _StorageFacts:
    error: str | None = None
    missing: bool = False
    stats: QueueStats | None = None
    recent_dead: int = 0
    groups: list[DLQGroup] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)


async def run_doctor(
    config: str | Path | None = None,
    *,
    settings: Settings | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    now: float | None = None,
    today: date | None = None,
) -> DoctorReport:
    """Load the settings (unless given), gather every fact, return every check's verdict."""
    report = DoctorReport()
    if settings is None:
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            report.checks.append(
                Check(
                    "config",
                    Status.FAIL,
                    str(exc),
                    f"fix {exc.path or 'the settings'}, then run again",
                )
            )
            return report
    now = time.time() if now is None else now
    report.checks.extend(config_checks(settings))
    report.checks.extend(beacon_checks(settings))
    report.checks.extend(credential_checks(settings))
    report.checks.extend(test_event_checks(settings))
    storage, probe, tokens = await asyncio.gather(
        _storage_facts(settings.storage, now),
        probe_graph(settings, transport=transport),
        token_health(settings, transport=transport),
    )
    report.checks.append(_storage_verdict(settings.storage, storage))
    report.checks.append(graph_check(probe, settings.graph_url))
    report.checks.append(
        clock_check(
            probe.skew_seconds,
            settings.max_future_skew,
            reachable=probe.reachable,
            from_graph=probe.not_graph is None,
        )
    )
    report.checks.extend(token_checks(tokens, datetime.fromtimestamp(now, UTC)))
    report.checks.extend(version_checks(version_health(settings, today)))
    report.checks.extend(_queue_checks(storage, now))
    from capirelay.ops.doctor_meta import meta_doctor_checks  # it imports Check from here

    report.checks.extend(await meta_doctor_checks(settings, transport=transport, now=now))
    return report


def _storage_verdict(url: str, facts: _StorageFacts) -> Check:
    if facts.missing:
        return missing_sqlite_check(sqlite_path_from_url(url))
    return storage_check(url, facts.error)


def missing_sqlite_check(path: str) -> Check:
    """A SQLite outbox file that does not exist yet: the state of every new install before
    its first ``serve`` (ok), unless ``serve`` could not create it (fail)."""
    where = Path(path).absolute()
    said = (
        f"{where}"
        if Path(path).is_absolute()
        else (f"{path} (from the current directory, as `capirelay serve` opens it: {where})")
    )
    blocker = _cannot_create_in(where.parent)
    if blocker is None:
        return Check(
            "storage",
            Status.OK,
            f"SQLite outbox {said} does not exist yet: the first `capirelay serve` creates it "
            "(if the gateway already ran, it used another storage path)",
        )
    return Check(
        "storage",
        Status.FAIL,
        f"SQLite outbox {said} does not exist and cannot be created: {blocker}",
        "point storage at a file in a directory the gateway's user can write "
        "(sqlite:////absolute/path/capirelay.db), or create that directory for it; "
        "until then `capirelay serve` cannot start",
    )


def _cannot_create_in(directory: Path) -> str | None:
    """Why a file cannot be created in ``directory`` (made with its missing parents first,
    as the SQLite outbox does), or ``None``; judged for the user running the doctor."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


def _queue_checks(facts: _StorageFacts, now: float) -> list[Check]:
    if facts.stats is None:
        return []
    checks = [backlog_check(facts.stats, now)]
    checks.append(dlq_check(facts.stats.dlq_size, facts.recent_dead))
    checks.extend(error_class_checks(facts.groups))
    checks.extend(match_quality_checks(predict_match_quality(facts.sample)))
    return checks


async def _storage_facts(url: str, now: float) -> _StorageFacts:
    facts = _StorageFacts()
    if _sqlite_file_missing(url):
        facts.missing = True
        return facts
    try:
        outbox = open_outbox(url)
        await outbox.open()
    except Exception as exc:  # any failure to open is the finding, not a crash
        facts.error = _describe(exc)
        return facts
    try:
        if not await outbox.ping():
            facts.error = "ping failed"
            return facts
        await _read_queue_facts(outbox, now, facts)
    except Exception as exc:
        facts.error = _describe(exc)
    finally:
        await outbox.close()
    return facts


def _sqlite_file_missing(url: str) -> bool:
    # Opening a SQLite outbox creates the file; the doctor must not leave one behind.
    try:
        return not Path(sqlite_path_from_url(url)).exists()
    except ValueError:
        return False


async def _read_queue_facts(outbox: Outbox, now: float, facts: _StorageFacts) -> None:
    facts.stats = await outbox.stats(now=now)
    recent = await outbox.dlq_list(
        DLQFilter(since=now - DLQ_RECENT_WINDOW_SECONDS), limit=DLQ_RECENT_SCAN
    )
    facts.recent_dead = len(recent)
    facts.groups = await views_of(outbox).dlq_breakdown()
    queued = await views_of(outbox).queue_sample(limit=SAMPLE_SIZE)
    dead = recent[:SAMPLE_SIZE] or await outbox.dlq_list(limit=SAMPLE_SIZE)
    facts.sample = _decode_payloads([e.payload for e in queued] + [d.payload for d in dead])


def _decode_payloads(payloads: Sequence[bytes]) -> list[dict[str, Any]]:
    decoded = []
    for payload in payloads:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            decoded.append(event)
    return decoded


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
