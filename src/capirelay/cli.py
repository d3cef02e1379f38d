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

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from capirelay._cli_help import quiet_flag_types

quiet_flag_types()

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


@app.command("emulator")
def emulator_command(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8765,
    pixel: Annotated[
        list[str] | None,
        typer.Option(
            "--pixel",
            metavar="ID:TOKEN",
            help="A pixel and token to accept (repeatable). Default: a demo pixel.",
        ),
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
            metavar="JSON",
            help="A fault, repeatable, as for POST /_emulator/faults (examples above).",
        ),
    ] = None,
    app_secret_env: Annotated[
        str | None,
        typer.Option(
            "--app-secret-env",
            help="Environment variable holding the app secret: appsecret_proof is then verified.",
        ),
    ] = None,
) -> None:
    """Run the local Graph API emulator in the foreground (Ctrl-C to stop).

    Fault examples:

    --fault '{"kind":"timeout","count":3}'

    --fault '{"kind":"throttle","code":613,"duration":60}'

    --fault '{"kind":"token_revoked"}'
    """
    import os

    import uvicorn

    from capirelay.emulator import EmulatorState, create_app

    pixels = _parse_pixels(pixel)
    app_secret = os.environ.get(app_secret_env) if app_secret_env else None
    if app_secret_env and not app_secret:
        err_console.print(f"[red]--app-secret-env: {app_secret_env} is not set or empty[/red]")
        raise typer.Exit(EXIT_USAGE)
    state = EmulatorState(
        pixels=pixels, store_events=store_events, fault_seed=seed, app_secret=app_secret
    )
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
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            envvar="CAPIRELAY_WORKERS",
            help="Gateway processes sharing the port: a number, or 'auto' for one per core "
            "(default 1: on the 2-core benchmark machine a second SQLite worker added no "
            "throughput; see docs/benchmarks.md).",
        ),
    ] = "1",
) -> None:
    """Run the gateway: ingest, durable queue, delivery to Meta (SIGTERM stops it gracefully)."""
    from capirelay.server.run import main as serve_main
    from capirelay.server.workers import default_workers

    argv = ["--log-level", log_level, "--log-format", log_format]
    if workers.strip().lower() == "auto":
        count = default_workers()
    else:
        try:
            count = int(workers)
        except ValueError:
            typer.echo(f"--workers: expected a number or 'auto', got {workers!r}", err=True)
            raise typer.Exit(2) from None
    argv += ["--workers", str(count)]
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
        bool, typer.Option("--once", help="Send one sample event, show it delivered, exit.")
    ] = False,
) -> None:
    """Gateway + local Graph API emulator + a demo shop page, all on this machine.

    Prints the shop and dashboard URLs, the dashboard token, the ingest key with
    a curl example, and writes the demo's settings to capirelay-demo.toml (next
    to --db) so `capirelay dlq list --config capirelay-demo.toml` reads its queue.
    ./capirelay.toml is not read.  Ctrl-C stops it.
    """
    import asyncio
    import logging

    from capirelay.demo import DemoOptions, run_demo
    from capirelay.logs import logging_configured

    with logging_configured(logging.WARNING):
        try:
            code = asyncio.run(
                run_demo(DemoOptions(host=host, port=port, db_path=db, once=once), console)
            )
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            code = 0
    if code:
        raise typer.Exit(code)


def _register_subcommands() -> None:
    from capirelay.cli_dlq import dlq_app
    from capirelay.cli_doctor import doctor_command
    from capirelay.cli_erase import erase_command
    from capirelay.cli_hash import hash_command
    from capirelay.cli_import import import_command
    from capirelay.cli_init import init_command
    from capirelay.cli_mapping import mapping_app
    from capirelay.cli_migrate import migrate_command
    from capirelay.cli_pixel import pixel_app
    from capirelay.cli_send import send_command
    from capirelay.cli_trace import trace_command

    app.add_typer(dlq_app, name="dlq")
    app.command("doctor")(doctor_command)
    app.command("hash")(hash_command)
    app.command("init")(init_command)
    app.command("send")(send_command)
    app.add_typer(mapping_app, name="mapping")
    app.command("migrate")(migrate_command)
    app.add_typer(pixel_app, name="pixel")
    app.command("trace")(trace_command)
    app.command("import")(import_command)
    app.command("erase")(erase_command)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``capirelay = "capirelay.cli:main"``)."""
    app(args=argv, prog_name="capirelay")
