"""``capirelay mapping test MAPPING SAMPLE.json``: what a mapping would queue, without sending.

MAPPING is a mapping file or a preset's name (``shopify``, ``woocommerce``,
``stripe``: its default mapping).  Each event the sample maps to is run
through the same ingest pipeline as the gateway's (normalize, hash, validate)
and printed twice: the mapped event with its identifiers redacted, and the
wire payload that would be queued (hashed, so nothing raw is printed).  Every
problem follows.  Nothing is stored or sent.

Exit codes: 0 when every event would be queued (or no rule matched), 1 when
any would be rejected, 2 when the mapping or the sample cannot be read.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from capirelay.config import PixelSettings
from capirelay.events import Event
from capirelay.ingest import PreparedEvent, prepare_event
from capirelay.problems import Problem
from capirelay.sources.content_ids import (
    DEFAULT_TEMPLATES,
    PRESET_FIELDS,
    ContentIdTemplate,
    with_content_ids,
)
from capirelay.sources.mapping import (
    EventMapping,
    MappedEvent,
    MappingLoadError,
    load_mapping,
    redacted_summary,
)
from capirelay.sources.webhooks import PRESETS
from capirelay.sources.webhooks._base import identifier_hint

mapping_app = typer.Typer(help="Check declarative event mapping files.", no_args_is_help=True)

TEST_PIXEL_ID = "1"
EXIT_REJECTED = 1
EXIT_UNUSABLE = 2


@mapping_app.command("test")
def test_command(
    mapping: Annotated[str, typer.Argument(help="Mapping file, or a preset name (shopify...).")],
    sample: Annotated[Path, typer.Argument(help="A JSON payload, as the sender posts it.")],
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic",
            help="The payload's topic (e.g. orders/paid); presets that "
            "carry it in the body (stripe) find it themselves.",
        ),
    ] = None,
    default_country: Annotated[
        str | None,
        typer.Option("--default-country", help="The pixel's default_country for phones etc."),
    ] = None,
    pixel_id: Annotated[
        str, typer.Option("--pixel-id", help="Pixel id used for derived event ids.")
    ] = TEST_PIXEL_ID,
    at: Annotated[
        str | None,
        typer.Option(
            "--now",
            help="Check event age as of this time (ISO 8601 or Unix "
            "seconds) instead of now; for samples with old timestamps.",
        ),
    ] = None,
) -> None:
    """Print the events MAPPING makes of SAMPLE.json, and every problem; send nothing."""
    compiled, preset_topic = _mapping(mapping)
    preset = PRESETS.get(mapping) if not Path(mapping).exists() else None
    payload = _sample(sample)
    now = _now(at)
    if topic is None and preset_topic is not None:
        topic = preset_topic(payload)
    mapped = compiled.apply(payload, now=now, topic=topic)
    typer.echo(f"mapping: {compiled.source}")
    typer.echo(f"topic: {topic if topic is not None else '(none)'}")
    if not mapped:
        unmapped = compiled.unmapped(payload, topic=topic)
        typer.echo(
            f"no rule matched ({unmapped.reason}): nothing would be queued "
            "(a webhook answers 200 'ignored')"
        )
        typer.echo(f"  {unmapped.message}")
        return
    test_flag = preset.test_mode(payload) if preset is not None else None
    if preset is not None and test_flag is not None:
        typer.echo(
            f"note: the payload says {test_flag}: a {preset.name} webhook sends it only under a "
            "test_event_code, and answers it 'ignored' (test_mode) when none is configured"
        )
    pixel = PixelSettings(default_country=default_country)
    rejected = 0
    for number, item in enumerate(mapped, start=1):
        prepared = prepare_event(
            item.event,
            pixel_id=pixel_id,
            pixel=pixel,
            now=now,
            test_event_code=None,
            source="mapping-test",
            max_future_skew=300,
        )
        rejected += prepared.rejected
        _print_event(number, len(mapped), item, prepared, default_country)
        hint = identifier_hint(preset, topic, prepared.problems) if preset is not None else None
        if hint is not None:
            typer.echo(f"  hint: {hint.message}")
    queued = len(mapped) - rejected
    typer.echo(f"\n{len(mapped)} event(s): {queued} would be queued, {rejected} rejected")
    if rejected:
        raise typer.Exit(EXIT_REJECTED)


def _mapping(name: str) -> tuple[EventMapping, Any]:
    """The compiled mapping, and for a preset its body-topic function."""
    path = Path(name)
    if not path.exists() and name in PRESETS:
        preset = PRESETS[name]
        compiled = preset.default_mapping()
        if compiled is not None:
            template = DEFAULT_TEMPLATES.get(name)
            if template is not None:  # the ids the gateway sends for this preset
                fields = PRESET_FIELDS[name]
                compiled = with_content_ids(
                    compiled, ContentIdTemplate.parse(template, fields, setting="content_id")
                )
            return compiled, lambda payload: preset.topic({}, payload)
    try:
        return load_mapping(path), None
    except MappingLoadError as exc:
        typer.echo(str(exc), err=True)
        if not path.exists():
            typer.echo(f"presets: {', '.join(sorted(PRESETS))}", err=True)
        raise typer.Exit(EXIT_UNUSABLE) from None


def _sample(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        typer.echo(f"{path}: cannot read the sample ({exc.strerror})", err=True)
    except orjson.JSONDecodeError as exc:
        typer.echo(f"{path}: not valid JSON ({exc.msg} at {exc.pos})", err=True)
    raise typer.Exit(EXIT_UNUSABLE)


def _now(at: str | None) -> float:
    if at is None:
        return time.time()
    try:
        return float(at)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        typer.echo("--now must be ISO 8601 (2024-03-15T18:00:00Z) or Unix seconds", err=True)
        raise typer.Exit(EXIT_UNUSABLE) from None
    return moment.timestamp()


def _print_event(
    number: int,
    total: int,
    item: MappedEvent,
    prepared: PreparedEvent,
    default_country: str | None,
) -> None:
    verdict = "REJECTED" if prepared.rejected else "would be queued"
    typer.echo(
        f"\nevent {number} of {total} (rule {item.rule!r}): "
        f"{item.event.get('event_name')} event_id={prepared.event_id or '-'} -> {verdict}"
    )
    typer.echo("mapped (identifiers redacted):")
    typer.echo(_indent(_json(redacted_summary(item.event))))
    wire = _wire(item, prepared, default_country)
    if wire is not None:
        typer.echo("wire payload (normalized and hashed):")
        typer.echo(_indent(_json(wire)))
    problems = [*item.problems, *prepared.problems]
    typer.echo("problems:" if problems else "problems: none")
    for problem in problems:
        typer.echo(f"  {_problem_line(problem)}")


def _wire(
    item: MappedEvent, prepared: PreparedEvent, default_country: str | None
) -> dict[str, Any] | None:
    if prepared.new_event is not None:
        wire: dict[str, Any] = orjson.loads(prepared.new_event.payload)
        return wire
    # Rejected by Meta's rules: still show what would have gone out, when it can be built.
    try:
        payload = Event.model_validate(item.event).to_wire(default_country).payload
    except ValidationError:
        return None
    payload.setdefault("event_id", prepared.event_id)
    return payload


def _problem_line(problem: Problem) -> str:
    return (
        f"{problem.severity.value:<7} {problem.code} [{problem.field or 'event'}] {problem.message}"
    )


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
