"""``capirelay send``: send events from a JSON file straight to Graph, checked locally first.

Meta refuses a whole request when one event in it is invalid, so each event is
validated here with the gateway's own rules before anything is sent: the
valid ones go out in one request, every problem of every invalid one is
listed (by event index, name and id), and the exit status is non-zero when
any event was not sent.  ``send`` has no queue: nothing it fails to send is
retried, and its messages say so.

Settings are found as by every other command (``--config``, ``$CAPIRELAY_CONFIG``,
``./capirelay.toml``, ``CAPIRELAY_*`` variables): the request goes to their
``graph_url`` with the pixel's ``api_version``; ``--graph-url`` and
``--api-version`` win over them.  The token is ``CAPIRELAY_ACCESS_TOKEN`` when set
(a flag would land in shell history and ``ps``), else the pixel's configured
``access_token``.

Each event is then prepared and sent as the gateway prepares and delivers the
pixel's events (:func:`capirelay.ingest.prepare_event`,
:meth:`capirelay.config.Settings.graph_client_options`): phones and zips completed
with the pixel's ``default_country``, its ``consent`` and ``pii_in_urls`` policies
applied, an ``event_id`` derived when none was given, its ``test_event_code``, and
the request made with its ``app_secret`` (``appsecret_proof``) and
``partner_agent``.  ``--default-country`` and ``--test-event-code`` win over the
pixel's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from capirelay.cli._output import err_console, error, warning
from capirelay.cli.storage import ConfigOpt, load_config_or_exit
from capirelay.config import PixelSettings
from capirelay.config_errors import variable_holding
from capirelay.problems import Problem
from capirelay.wording import counted

__all__ = ["send_command"]

console = Console(soft_wrap=True, highlight=False)

TOKEN_ENV = "CAPIRELAY_ACCESS_TOKEN"
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Target:
    """Where the request goes and with what, each named with where it came from."""

    pixel: str
    token: str = field(repr=False)
    token_source: str
    api_version: str
    graph_url: str
    graph_url_source: str
    timeout: float
    # The pixel's settings as the gateway uses them (the config's, or the defaults for a
    # pixel it does not name), with --default-country on top.
    settings: PixelSettings
    test_event_code: str | None
    app_secret: str | None = field(repr=False)
    partner_agent: str | None
    max_future_skew: int


@dataclass
class Checked:
    """One event of the file after local validation."""

    index: int
    name: str
    event_id: str | None
    payload: bytes | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        ident = f", event_id {self.event_id}" if self.event_id else ""
        return f"event {self.index} ({self.name}{ident})"


def send_command(
    event_file: Annotated[
        Path, typer.Argument(help="JSON file: one CAPI event, a list, or {'data': [...]}.")
    ],
    pixel: Annotated[str, typer.Option("--pixel", help="Pixel (dataset) id.")],
    test_event_code: Annotated[
        str | None,
        typer.Option(
            "--test-event-code",
            help="Show in Events Manager > Test events (default: the pixel's test_event_code).",
        ),
    ] = None,
    api_version: Annotated[
        str | None,
        typer.Option(
            "--api-version",
            help="Graph API version (default: the pixel's api_version in the config, v26.0).",
        ),
    ] = None,
    graph_url: Annotated[
        str | None,
        typer.Option(
            "--graph-url",
            help="Graph base URL, an emulator's for testing (default: the config's graph_url "
            "or CAPIRELAY_GRAPH_URL, else https://graph.facebook.com).",
        ),
    ] = None,
    default_country: Annotated[
        str | None,
        typer.Option(
            "--default-country",
            help="Completes national phones/zips (default: the pixel's default_country).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds.")] = 1.5,
    config: ConfigOpt = None,
) -> None:
    """Check events from a JSON file locally, then send the valid ones to Graph.

    Reads the settings like the other commands (--config, $CAPIRELAY_CONFIG,
    ./capirelay.toml, CAPIRELAY_* variables) and sends to their graph_url with the
    pixel's api_version; the flags win.  The access token comes from
    CAPIRELAY_ACCESS_TOKEN, else the pixel's access_token setting.  Events are
    prepared and sent as the gateway does for the pixel: its default_country,
    test_event_code, app_secret and partner_agent (--default-country and
    --test-event-code win).  Exits 1 when any event was not sent (each problem is
    listed); nothing is retried.
    """
    if not pixel.isascii() or not pixel.isdigit():
        err_console.print("--pixel must be the numeric pixel (dataset) id")
        raise typer.Exit(EXIT_USAGE)
    target = _target(
        pixel, config, api_version, graph_url, timeout, default_country, test_event_code
    )
    now = time.time()
    checked = [_check(index, raw, target, now) for index, raw in enumerate(_read(event_file))]
    valid = [c for c in checked if c.payload is not None and not c.errors]
    for item in checked:
        _print_problems(item)
    sent = _send(valid, target)
    not_sent = len(checked) - (len(valid) if sent else 0)
    if not_sent:
        them = "it" if not_sent == 1 else "them"
        err_console.print(
            f"{_not_sent_summary(not_sent, len(checked))} (why: above). send keeps no "
            f"queue and retries nothing: send {them} again once fixed.",
            markup=False,
        )
        raise typer.Exit(EXIT_FAILED)


def _target(
    pixel: str,
    config: Path | None,
    api_version: str | None,
    graph_url: str | None,
    timeout: float,
    default_country: str | None,
    test_event_code: str | None,
) -> Target:
    """The settings as every command finds them, with this command's flags on top."""
    from capirelay.config import graph_url_problem

    settings, path = load_config_or_exit(config)
    configured = settings.pixels.get(pixel)
    token, token_source = _token(pixel, configured)
    if graph_url is not None:
        problem = graph_url_problem(graph_url)
        if problem is not None:
            err_console.print(f"--graph-url {problem}", markup=False)
            raise typer.Exit(EXIT_USAGE)
        url, url_source = graph_url, "--graph-url"
    else:
        url, url_source = settings.graph_url, _graph_url_source(settings, path)
    options = settings.graph_client_options(configured)
    pixel_settings = configured if configured is not None else PixelSettings()
    if default_country is not None:
        pixel_settings = pixel_settings.model_copy(update={"default_country": default_country})
    return Target(
        pixel,
        token,
        token_source,
        api_version or options.api_version,
        url,
        url_source,
        timeout,
        settings=pixel_settings,
        test_event_code=test_event_code or pixel_settings.test_event_code,
        app_secret=options.app_secret,
        partner_agent=options.partner_agent,
        max_future_skew=settings.max_future_skew,
    )


def _token(pixel: str, configured: Any) -> tuple[str, str]:
    """CAPIRELAY_ACCESS_TOKEN, else the pixel's ``access_token`` setting; exit 2 with
    where a token goes when neither holds one.  Never prints a token."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token, TOKEN_ENV
    setting = f"pixels.{pixel}.access_token"
    secret = configured.access_token if configured is not None else None
    if secret is None:
        err_console.print(
            f"no access token for pixel {pixel}: set {TOKEN_ENV} to the pixel's access "
            f'token, or give it in the config: access_token = {{ env = "..." }} under '
            f"[pixels.{pixel}] (capirelay init writes it)",
            markup=False,
        )
        raise typer.Exit(EXIT_USAGE)
    token = secret.resolve() or ""
    if not token:
        err_console.print(
            f"no access token for pixel {pixel}: {setting} reads the {secret.describe()}, "
            f"which is missing or empty; put the pixel's access token there, or set {TOKEN_ENV}",
            markup=False,
        )
        raise typer.Exit(EXIT_USAGE)
    return token, f"{setting} ({secret.describe()})"


def _graph_url_source(settings: Any, path: Path | None) -> str:
    """Where the settings' ``graph_url`` came from, as a user would change it."""
    if "graph_url" not in settings.model_fields_set:
        return "the default graph_url (set graph_url in the config to change it)"
    if variable_holding(("graph_url",)) is not None:
        return "CAPIRELAY_GRAPH_URL"
    return f"graph_url in {path}" if path is not None else "graph_url"


def _not_sent_summary(not_sent: int, total: int) -> str:
    """How many of the file's events were not sent, in plain English."""
    if total == 1:
        return "the event was not sent"
    if not_sent == total:
        return "neither event was sent" if total == 2 else f"none of the {total} events was sent"
    verb = "was" if not_sent == 1 else "were"
    return f"{not_sent} of {total} events {verb} not sent"


def _read(path: Path) -> list[Any]:
    try:
        loaded = orjson.loads(path.read_bytes())
    except OSError as exc:
        err_console.print(f"cannot read {path}: {exc.strerror}", markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    except orjson.JSONDecodeError as exc:
        err_console.print(f"{path} is not valid JSON: {exc}", markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
        loaded = loaded["data"]
    events = loaded if isinstance(loaded, list) else [loaded]
    if not events:
        err_console.print(
            f"{path} holds no events: give one event object or a list of them", markup=False
        )
        raise typer.Exit(EXIT_USAGE)
    return events


def _check(index: int, raw: Any, target: Target, now: float) -> Checked:
    """Prepare one event as the gateway does for the pixel; never echo a value."""
    from pydantic import ValidationError

    from capirelay.events import prepare_wire
    from capirelay.ingest import prepare_event
    from capirelay.sources import consent
    from capirelay.validate import validate_event

    if not isinstance(raw, dict):
        return Checked(index, "?", None, errors=["the event must be a JSON object"])
    name = str(raw.get("event_name") or "?")
    event_id = raw.get("event_id")
    item = Checked(index, name, str(event_id) if event_id not in (None, "") else None)
    pixel = target.settings
    if consent.ldu_active(pixel.consent):  # as POST /v1/events applies it
        raw = consent.apply_ldu(raw, pixel.consent, default_country=pixel.default_country)
    try:
        # Only to tell a malformed event by the file's own paths; prepare_event parses again.
        prepare_wire(raw, default_country=pixel.default_country)
    except RecursionError:
        pass  # prepare_event names it
    except ValidationError as exc:
        seen: set[str] = set()
        for detail in exc.errors(include_input=False, include_url=False):
            location = _real_path(raw, detail["loc"])
            if location not in seen:
                seen.add(location)
                item.errors.append(f"{location}: {detail['msg']}")
        # Meta's rules on the rest of the event, so every problem shows in one run.
        rest = {k: v for k, v in raw.items() if k != "user_data" and k not in seen}
        for problem in validate_event(rest):
            if (
                problem.is_error
                and not problem.field.startswith("user_data")
                and not any(problem.field == s or problem.field.startswith(s + ".") for s in seen)
            ):
                item.errors.append(f"{problem.field}: {problem.message}")
        return item
    # As ingest reports it: a user_data emptied by dropped values names them, not "missing";
    # the drop warnings that error repeats are not printed a second time.
    prepared = prepare_event(
        raw,
        pixel_id=target.pixel,
        pixel=pixel,
        now=now,
        test_event_code=target.test_event_code,
        source="send",
        max_future_skew=target.max_future_skew,
        keep_dropped=False,
    )
    _sort(item, prepared.problems)
    if prepared.new_event is not None:
        item.payload = prepared.new_event.payload
    return item


def _real_path(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """``loc`` cut to the keys that exist in the event (drops pydantic's union member tags)."""
    parts: list[str] = []
    current: Any = raw
    for part in loc:
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and part < len(current)
        if in_dict or in_list:
            current = current[part]
        elif not parts or isinstance(current, dict):
            parts.append(str(part))  # a missing field: name it, then stop
            break
        else:
            break
        parts.append(str(part))
    return ".".join(parts) or "event"


def _sort(item: Checked, problems: list[Problem]) -> None:
    for problem in problems:
        line = f"{problem.field}: {problem.message}"
        target = item.errors if problem.is_error else item.warnings
        if line not in target:
            target.append(line)


def _print_problems(item: Checked) -> None:
    if item.errors:
        error(f"{item.label}: not sent")
        for line in item.errors:
            err_console.print(f"  error   {line}", markup=False)
    elif item.warnings:
        warning(f"{item.label}: valid, with warnings")
    for line in item.warnings:
        err_console.print(f"  warning {line}", markup=False)


def _send(valid: list[Checked], target: Target) -> bool:
    """Send the valid events in one request; True when Graph accepted it."""
    from capirelay.graph import GraphError, SyncGraphClient

    if not valid:
        return False
    payloads = [item.payload for item in valid if item.payload is not None]
    pixel = target.pixel
    test_event_code = target.test_event_code
    try:
        with SyncGraphClient(
            api_version=target.api_version,
            base_url=target.graph_url,
            timeout=target.timeout,
            app_secret=target.app_secret,
            partner_agent=target.partner_agent,
        ) as client:
            result = client.send_events(
                pixel, payloads, access_token=target.token, test_event_code=test_event_code
            )
    except GraphError as exc:
        _print_graph_error(exc, len(payloads), target)
        return False
    except ValueError as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    console.print(
        f"sent {counted(len(payloads), 'event')} to pixel {pixel}: events_received "
        f"{result.events_received}, fbtrace_id {result.fbtrace_id}"
    )
    if test_event_code:
        shows = "it shows" if len(payloads) == 1 else "they show"
        console.print(f"{shows} in Events Manager > Test events under {test_event_code}")
    for message in result.messages:
        console.print(f"message from Meta: {message}")
    return True


# What a one-shot command that queues and retries nothing can do, per class: the
# gateway's own sentences (capirelay.graph.explain) promise retries, holds and replays
# from the dead-letter queue that `send` does not make.
_SEND_ADVICE = {
    "transient": (
        "Nothing was sent and nothing will be retried: run the command again later (the "
        "gateway, `capirelay serve`, queues and retries)."
    ),
    "throttled": "Nothing was sent: wait a few minutes and run the command again.",
    "unknown": (
        "Nothing was sent and Meta named no event: read its message above; if it names a "
        "parameter, fix it and run the command again, otherwise run it again later and "
        "check Meta's status page if it persists."
    ),
    "auth": (
        "The token was read from {token_source}: use a system-user token with the "
        "ads_management permission on this pixel (Business Settings > System users)."
    ),
    "invalid": (
        "Meta refused the events although they passed the local checks; its message above "
        "names the event and field: fix it and run the command again."
    ),
    "config": (
        "Meta refused the pixel or its setup: check --pixel (the dataset id from Events "
        "Manager) and the API version {api_version} (--api-version, else api_version under "
        "[pixels.{pixel}]), then run the command again."
    ),
}
# Classes whose advice still holds beside a code's own sentence (not config or invalid:
# there the code's sentence is the fix, and the class's would contradict it).
_ADVICE_BESIDE_THE_CODES = frozenset({"transient", "throttled", "unknown", "auth"})


def _print_graph_error(exc: Any, count: int, target: Target) -> None:
    where = f"HTTP {exc.status}" if exc.status else "no answer"
    from capirelay.graph.errors import code_label, specific_explanation

    code = f", code {code_label(exc.code, exc.subcode)}" if exc.code else ""
    error(
        f"not sent: the request with {counted(count, 'event')} failed ({where}{code}"
        f"{f', fbtrace_id {exc.fbtrace_id}' if exc.fbtrace_id else ''})"
    )
    if exc.type == "transport":  # Graph never answered: nothing of Meta's to quote
        _print_no_answer(exc, target)
        return
    if exc.meta_says:
        err_console.print(f"  Meta says: {exc.meta_says}", markup=False)
    kind = str(exc.retry_class)
    advice = _SEND_ADVICE.get(kind, exc.explanation).format(
        token_source=target.token_source, api_version=target.api_version, pixel=target.pixel
    )
    specific = specific_explanation(exc.code, exc.subcode)
    if specific and "replay from the dead-letter queue" in specific:
        specific = None  # the generic 2804xxx sentence: the gateway's, not send's
    err_console.print(f"  what to do: {specific or advice}", markup=False)
    if specific and kind in _ADVICE_BESIDE_THE_CODES:
        err_console.print(f"  {advice}", markup=False)


def _print_no_answer(exc: Any, target: Target) -> None:
    """A connection failure or timeout: the address tried, where it came from, what to check."""
    from capirelay.graph.errors import graph_address

    address = exc.address or graph_address(target.graph_url)
    what = exc.message.removesuffix(f" to {address}")
    err_console.print(f"  no answer from {address}: {what}", markup=False)
    slow = (
        f"; if it is only slow, give it longer with --timeout (now {target.timeout:g} s)"
        if what.startswith("timeout")
        else ""
    )
    err_console.print(
        f"  what to do: check that {address} is the Graph API (or the emulator or proxy) you "
        f"meant: it comes from {target.graph_url_source}; then that it runs and is "
        "reachable from here: the network, a firewall, or a proxy (HTTPS_PROXY) on the "
        f"way{slow}. {_SEND_ADVICE['transient']}",
        markup=False,
    )
