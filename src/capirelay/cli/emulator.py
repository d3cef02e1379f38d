"""``capirelay emulator``: the local Graph API emulator in the foreground."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from capirelay.cli._output import err_console, error

console = Console()

EXIT_USAGE = 2
DEFAULT_EMULATOR_PIXEL = "1234567890"
DEFAULT_EMULATOR_TOKEN = "emulator-token"  # public, documented: the emulator's demo token


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

    Token expiry (Graph then answers 190/463), for a --pixel ID:TOKEN:

    POST /_emulator/tokens/expiry {"access_token":"TOKEN","expires_in":-1}

    ("expires_in":3600 expires it in an hour, "expires_at":0 never; the emulator's
    clock decides, POST /_emulator/clock moves it.)
    """
    import os

    import uvicorn

    from capirelay.emulator import EmulatorState, create_app

    pixels = _parse_pixels(pixel)
    app_secret = os.environ.get(app_secret_env) if app_secret_env else None
    if app_secret_env and not app_secret:
        error(f"--app-secret-env: {app_secret_env} is not set or empty")
        raise typer.Exit(EXIT_USAGE)
    state = EmulatorState(
        pixels=pixels, store_events=store_events, fault_seed=seed, app_secret=app_secret
    )
    try:
        for spec in [*_startup_faults(latency_ms, fail_rate, throttle_rate), *_json_faults(fault)]:
            state.faults.add(spec)
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"capirelay emulator on http://{host}:{port}", highlight=False)
    for pixel_id in pixels:
        console.print(f"  pixel {pixel_id}", highlight=False)
    if not pixel:
        console.print(f"  (demo token: {DEFAULT_EMULATOR_TOKEN})", highlight=False)
    console.print("  inspect: /_emulator/stats, /_emulator/pixels/{id}/events", highlight=False)
    console.print("  token expiry: POST /_emulator/tokens/expiry (see --help)", highlight=False)
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
