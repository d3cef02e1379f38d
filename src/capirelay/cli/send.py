"""``capirelay send``: send events from a JSON file straight to Graph, checked locally first.

Meta refuses a whole request when one event in it is invalid, so each event is
validated here with the gateway's own rules before anything is sent: the
valid ones go out in one request, every problem of every invalid one is
listed (by event index, name and id), and the exit status is non-zero when
any event was not sent.  ``send`` has no queue: nothing it fails to send is
retried, and its messages say so.

The token comes from ``CAPIRELAY_ACCESS_TOKEN`` (a flag would land in shell
history and ``ps``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from capirelay.cli._output import err_console, error, warning
from capirelay.problems import Problem

__all__ = ["send_command"]

console = Console(soft_wrap=True, highlight=False)

TOKEN_ENV = "CAPIRELAY_ACCESS_TOKEN"
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass
class Checked:
    """One event of the file after local validation."""

    index: int
    name: str
    event_id: str | None
    payload: dict[str, Any] | None = None
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
        str | None, typer.Option("--test-event-code", help="Show in Events Manager > Test events.")
    ] = None,
    api_version: Annotated[str, typer.Option("--api-version", help="Graph API version.")] = "v26.0",
    graph_url: Annotated[
        str, typer.Option("--graph-url", help="Graph base URL (an emulator's URL for testing).")
    ] = "https://graph.facebook.com",
    default_country: Annotated[
        str | None, typer.Option("--default-country", help="Completes national phones/zips.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds.")] = 1.5,
) -> None:
    """Check events from a JSON file locally, then send the valid ones to Graph.

    The access token comes from CAPIRELAY_ACCESS_TOKEN.  Exits 1 when any event
    was not sent (each problem is listed); nothing is retried.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        err_console.print(f"set {TOKEN_ENV} to the pixel's access token")
        raise typer.Exit(EXIT_USAGE)
    if not pixel.isascii() or not pixel.isdigit():
        err_console.print("--pixel must be the numeric pixel (dataset) id")
        raise typer.Exit(EXIT_USAGE)
    checked = [_check(index, raw, default_country) for index, raw in enumerate(_read(event_file))]
    valid = [c for c in checked if c.payload is not None and not c.errors]
    for item in checked:
        _print_problems(item)
    sent = _send(valid, pixel, token, test_event_code, api_version, graph_url, timeout)
    not_sent = len(checked) - (len(valid) if sent else 0)
    if not_sent:
        them = "it" if not_sent == 1 else "them"
        err_console.print(
            f"{_not_sent_summary(not_sent, len(checked))} (why: above). send keeps no "
            f"queue and retries nothing: send {them} again once fixed.",
            markup=False,
        )
        raise typer.Exit(EXIT_FAILED)


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


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


def _check(index: int, raw: Any, default_country: str | None) -> Checked:
    """Validate one event like the gateway does; never echo a value."""
    from pydantic import ValidationError

    from capirelay.events import Event, explain_dropped_user_data
    from capirelay.validate import validate_event

    if not isinstance(raw, dict):
        return Checked(index, "?", None, errors=["the event must be a JSON object"])
    name = str(raw.get("event_name") or "?")
    event_id = raw.get("event_id")
    item = Checked(index, name, str(event_id) if event_id not in (None, "") else None)
    try:
        wire = Event.model_validate(raw).to_wire(default_country=default_country)
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
    problems = wire.problems + validate_event(wire.payload)
    _sort(item, explain_dropped_user_data(problems, keep_dropped=False))
    item.payload = wire.payload
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


def _send(
    valid: list[Checked],
    pixel: str,
    token: str,
    test_event_code: str | None,
    api_version: str,
    graph_url: str,
    timeout: float,
) -> bool:
    """Send the valid events in one request; True when Graph accepted it."""
    from capirelay.graph import GraphError, SyncGraphClient

    if not valid:
        return False
    payloads = [item.payload for item in valid if item.payload is not None]
    try:
        with SyncGraphClient(
            api_version=api_version, base_url=graph_url, timeout=timeout
        ) as client:
            result = client.send_events(
                pixel, payloads, access_token=token, test_event_code=test_event_code
            )
    except GraphError as exc:
        _print_graph_error(exc, len(payloads))
        return False
    except ValueError as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    console.print(
        f"sent {_events(len(payloads))} to pixel {pixel}: events_received "
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
        f"The token was read from {TOKEN_ENV}: use a system-user token with the "
        "ads_management permission on this pixel (Business Settings > System users)."
    ),
    "invalid": (
        "Meta refused the events although they passed the local checks; its message above "
        "names the event and field: fix it and run the command again."
    ),
    "config": (
        "Meta refused the pixel or its setup: check --pixel (the dataset id from Events "
        "Manager) and --api-version, then run the command again."
    ),
}
# Classes whose advice still holds beside a code's own sentence (not config or invalid:
# there the code's sentence is the fix, and the class's would contradict it).
_ADVICE_BESIDE_THE_CODES = frozenset({"transient", "throttled", "unknown", "auth"})


def _print_graph_error(exc: Any, count: int) -> None:
    where = f"HTTP {exc.status}" if exc.status else "no answer"
    from capirelay.graph.errors import code_label, specific_explanation

    code = f", code {code_label(exc.code, exc.subcode)}" if exc.code else ""
    error(
        f"not sent: the request with {_events(count)} failed ({where}{code}"
        f"{f', fbtrace_id {exc.fbtrace_id}' if exc.fbtrace_id else ''})"
    )
    if exc.meta_says:
        err_console.print(f"  Meta says: {exc.meta_says}", markup=False)
    kind = str(exc.retry_class)
    advice = _SEND_ADVICE.get(kind, exc.explanation)
    specific = specific_explanation(exc.code, exc.subcode)
    if specific and "replay from the dead-letter queue" in specific:
        specific = None  # the generic 2804xxx sentence: the gateway's, not send's
    err_console.print(f"  what to do: {specific or advice}", markup=False)
    if specific and kind in _ADVICE_BESIDE_THE_CODES:
        err_console.print(f"  {advice}", markup=False)
