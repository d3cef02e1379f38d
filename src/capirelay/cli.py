"""The ``capirelay`` command line: thin commands over the library layers.

Each command does one job and leaves the work to its module: ``hash`` to
:mod:`capirelay.normalize`, ``send`` to :mod:`capirelay.events` and
:mod:`capirelay.graph`, ``emulator`` to :mod:`capirelay.emulator`.  Imports
happen inside the commands so ``capirelay --help`` stays fast and one broken
layer does not take the whole CLI down.

Secrets never come from flags (they would land in shell history and ``ps``):
``send`` reads the token from ``CAPIRELAY_ACCESS_TOKEN``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

app = typer.Typer(
    name="capirelay",
    help="Self-hosted gateway and toolkit for the Meta Conversions API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold tokens and identifiers
)
console = Console()
err_console = Console(stderr=True)

TOKEN_ENV = "CAPIRELAY_ACCESS_TOKEN"
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_EMULATOR_PIXEL = "1234567890"
DEFAULT_EMULATOR_TOKEN = "emulator-token"  # public, documented: the emulator's demo token


@app.command("hash")
def hash_command(
    field: Annotated[str, typer.Argument(help="Wire key or name: em, email, ph, phone, fn ...")],
    value: Annotated[str, typer.Argument(help="The raw value to normalize and hash.")],
    country: Annotated[
        str | None,
        typer.Option("--country", help="Country hint (ISO alpha-2 or name) for ph, st, zp."),
    ] = None,
) -> None:
    """Print a value normalized as Meta expects, and its SHA-256."""
    from capirelay.normalize import NormalizationError, hash_field, is_sha256, normalize

    try:
        if is_sha256(value):
            # Already hashed: nothing to normalize; show what would go on the wire.
            normalized = "(already a SHA-256 hash; sent unchanged)"
        else:
            normalized = normalize(field, value, country=country)
        hashed = hash_field(field, value, country=country)
    except NormalizationError as exc:
        err_console.print(f"[red]cannot use this value for {exc.field}:[/red] {exc.reason}")
        raise typer.Exit(EXIT_USAGE) from None
    except (KeyError, ValueError):
        err_console.print(f"[red]unknown field[/red] {field!r}: use a wire key such as em or ph")
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"normalized: {normalized}", highlight=False)
    console.print(f"sha256:     {hashed}", highlight=False)


@app.command("send")
def send_command(
    event_file: Annotated[
        Path, typer.Argument(help="JSON file: one CAPI event, a list, or {'data': [...]}.")
    ],
    pixel: Annotated[str, typer.Option("--pixel", help="Pixel (dataset) id.")],
    test_event_code: Annotated[
        str | None, typer.Option("--test-event-code", help="Route to Events Manager > Test.")
    ] = None,
    api_version: Annotated[str, typer.Option("--api-version")] = "v26.0",
    graph_url: Annotated[
        str, typer.Option("--graph-url", help="Graph base URL (an emulator's URL for testing).")
    ] = "https://graph.facebook.com",
    default_country: Annotated[
        str | None, typer.Option("--default-country", help="Completes national phones/zips.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds.")] = 1.5,
) -> None:
    """Send events from a JSON file; the token comes from CAPIRELAY_ACCESS_TOKEN."""
    from capirelay.graph import GraphError, SyncGraphClient

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        err_console.print(f"[red]set {TOKEN_ENV}[/red] to the pixel's access token")
        raise typer.Exit(EXIT_USAGE)
    if not pixel.isascii() or not pixel.isdigit():
        err_console.print("[red]--pixel must be the numeric pixel id[/red]")
        raise typer.Exit(EXIT_USAGE)
    payloads = _wire_events(_read_events(event_file), default_country)
    try:
        client = SyncGraphClient(api_version=api_version, base_url=graph_url, timeout=timeout)
        with client:
            result = client.send_events(
                pixel, payloads, access_token=token, test_event_code=test_event_code
            )
    except GraphError as exc:
        err_console.print(f"[red]Meta rejected the request:[/red] {exc}", highlight=False)
        if exc.user_msg:
            err_console.print(f"  {exc.user_title or 'detail'}: {exc.user_msg}", highlight=False)
        err_console.print(f"  what to do: {exc.explanation}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"events_received: {result.events_received}", highlight=False)
    console.print(f"fbtrace_id: {result.fbtrace_id}", highlight=False)
    for message in result.messages:
        console.print(f"message: {message}", highlight=False)


def _read_events(path: Path) -> list[dict[str, Any]]:
    try:
        loaded = orjson.loads(path.read_bytes())
    except OSError as exc:
        err_console.print(f"[red]cannot read {path}:[/red] {exc.strerror}")
        raise typer.Exit(EXIT_USAGE) from None
    except orjson.JSONDecodeError:
        err_console.print(f"[red]{path} is not valid JSON[/red]")
        raise typer.Exit(EXIT_USAGE) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
        loaded = loaded["data"]
    events = loaded if isinstance(loaded, list) else [loaded]
    if not events or not all(isinstance(e, dict) for e in events):
        err_console.print("[red]expected a JSON object or a non-empty list of objects[/red]")
        raise typer.Exit(EXIT_USAGE)
    return events


def _wire_events(events: list[dict[str, Any]], default_country: str | None) -> list[dict[str, Any]]:
    """Normalize and hash each event; report (never echo) what was dropped."""
    from pydantic import ValidationError

    from capirelay.events import Event

    payloads = []
    for index, raw in enumerate(events):
        try:
            wire = Event.model_validate(raw).to_wire(default_country=default_country)
        except ValidationError as exc:
            for detail in exc.errors(include_input=False, include_url=False):
                location = ".".join(str(part) for part in detail["loc"])
                err_console.print(f"[red]event {index}: {location}:[/red] {detail['msg']}")
            raise typer.Exit(EXIT_USAGE) from None
        for problem in wire.problems:
            err_console.print(
                f"[yellow]event {index}: {problem.field}:[/yellow] {problem.message}",
                highlight=False,
            )
        payloads.append(wire.payload)
    return payloads


@app.command("emulator")
def emulator_command(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8765,
    pixel: Annotated[
        list[str] | None,
        typer.Option("--pixel", help="ID:TOKEN to accept (repeatable). Default: a demo pixel."),
    ] = None,
    latency_ms: Annotated[
        str | None, typer.Option("--latency-ms", help="Added latency: N or MIN-MAX (ms).")
    ] = None,
    fail_rate: Annotated[
        float, typer.Option("--fail-rate", help="Share of requests answered with HTTP 500 (0-1).")
    ] = 0.0,
    throttle_rate: Annotated[
        float, typer.Option("--throttle-rate", help="Share answered with rate limit 80004 (0-1).")
    ] = 0.0,
    store_events: Annotated[
        bool, typer.Option("--store-events/--no-store-events", help="Keep event bodies.")
    ] = True,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for fault randomness.")] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help=(
                "A fault as JSON, repeatable, same form as POST /_emulator/faults, e.g. "
                '\'{"kind":"timeout","count":3}\', \'{"kind":"throttle","code":613,'
                '"duration":60}\', \'{"kind":"token_revoked"}\'.'
            ),
        ),
    ] = None,
) -> None:
    """Run the local Graph API emulator in the foreground (Ctrl-C to stop)."""
    import uvicorn

    from capirelay.emulator import EmulatorState, create_app

    pixels = _parse_pixels(pixel)
    state = EmulatorState(pixels=pixels, store_events=store_events, fault_seed=seed)
    try:
        for spec in [*_startup_faults(latency_ms, fail_rate, throttle_rate), *_json_faults(fault)]:
            state.faults.add(spec)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"capirelay emulator on http://{host}:{port}", highlight=False)
    for pixel_id in pixels:
        console.print(f"  pixel {pixel_id}", highlight=False)
    if not pixel:
        console.print(f"  (demo token: {DEFAULT_EMULATOR_TOKEN})", highlight=False)
    console.print("  inspect: /_emulator/stats, /_emulator/pixels/{id}/events", highlight=False)
    uvicorn.run(
        create_app(state),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        date_header=False,  # the app stamps Date from the emulator's clock
    )


def _parse_pixels(specs: list[str] | None) -> dict[str, str]:
    if not specs:
        return {DEFAULT_EMULATOR_PIXEL: DEFAULT_EMULATOR_TOKEN}
    pixels: dict[str, str] = {}
    for spec in specs:
        pixel_id, sep, token = spec.partition(":")
        if not sep or not pixel_id.isdigit() or not token:
            err_console.print("[red]--pixel takes ID:TOKEN with a numeric id[/red]")
            raise typer.Exit(EXIT_USAGE)
        pixels[pixel_id] = token
    return pixels


def _json_faults(specs: list[str] | None) -> list[Any]:
    from capirelay.emulator import parse_fault

    faults = []
    for text in specs or []:
        try:
            spec = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError(f"--fault takes a JSON object, got {text[:40]!r}") from None
        if not isinstance(spec, dict):
            raise ValueError('--fault takes a JSON object such as \'{"kind":"timeout"}\'')
        faults.append(parse_fault(spec))
    return faults


def _startup_faults(latency_ms: str | None, fail_rate: float, throttle_rate: float) -> list[Any]:
    from capirelay.emulator import parse_fault

    specs: list[dict[str, Any]] = []
    if latency_ms:
        low, _, high = latency_ms.partition("-")
        try:
            latency: dict[str, Any] = {"kind": "latency", "latency_ms": float(low)}
            if high:
                latency["latency_max_ms"] = float(high)
        except ValueError:
            raise ValueError("--latency-ms takes N or MIN-MAX in milliseconds") from None
        specs.append(latency)
    if fail_rate:
        specs.append({"kind": "http_error", "status": 500, "probability": fail_rate})
    if throttle_rate:
        specs.append({"kind": "throttle", "code": 80004, "probability": throttle_rate})
    return [parse_fault(spec) for spec in specs]


@app.command("serve")
def serve_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="capirelay.toml (default: $CAPIRELAY_CONFIG or ./capirelay.toml)"
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Interface (default: settings.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: settings.port).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    log_format: Annotated[
        str, typer.Option("--log-format", help="text, or json: one JSON object per line.")
    ] = "text",
) -> None:
    """Run the gateway: ingest, durable queue, delivery to Meta (SIGTERM stops it gracefully)."""
    from capirelay.server.run import main as serve_main

    argv = ["--log-level", log_level, "--log-format", log_format]
    if config is not None:
        argv += ["--config", str(config)]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    code = serve_main(argv)
    if code:
        raise typer.Exit(code)


@app.command("demo")
def demo_command(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    db: Annotated[Path, typer.Option("--db", help="SQLite file for the demo's queue.")] = Path(
        "capirelay-demo.db"
    ),
    once: Annotated[
        bool, typer.Option("--once", help="Send the sample event, show it delivered, exit.")
    ] = False,
) -> None:
    """Gateway + local Graph API emulator + a demo shop page, all on this machine."""
    import asyncio
    import logging

    from capirelay.demo import DemoOptions, run_demo

    logging.basicConfig(level=logging.WARNING)
    code = asyncio.run(run_demo(DemoOptions(host=host, port=port, db_path=db, once=once), console))
    if code:
        raise typer.Exit(code)


def _register_subcommands() -> None:
    from capirelay.cli_dlq import dlq_app
    from capirelay.cli_doctor import doctor_command
    from capirelay.cli_erase import erase_command
    from capirelay.cli_import import import_command
    from capirelay.cli_mapping import mapping_app
    from capirelay.cli_migrate import migrate_command
    from capirelay.cli_trace import trace_command

    app.add_typer(dlq_app, name="dlq")
    app.command("doctor")(doctor_command)
    app.add_typer(mapping_app, name="mapping")
    app.command("migrate")(migrate_command)
    app.command("trace")(trace_command)
    app.command("import")(import_command)
    app.command("erase")(erase_command)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``capirelay = "capirelay.cli:main"``)."""
    app(args=argv, prog_name="capirelay")
