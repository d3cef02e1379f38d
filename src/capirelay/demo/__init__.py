"""``capirelay demo``: the whole path on one machine, with nothing to configure.

It starts the local Graph API emulator (standing in for Meta), the gateway on
an embedded SQLite file with the dashboard on, and a small shop page whose
"Buy" button sends a ``Purchase`` through the browser beacon.  One
server-to-server event is sent at start so something flows immediately.

It prints one block with every way in (shop, dashboard and its token, the
ingest key with a ready ``curl``, the emulator, the database and the config it
wrote), then a table of what happened to each event: queued, dropped and why,
rejected and why, delivered to "Meta" with the ``fbtrace_id``.  The shop page
shows the same outcome for each click.

The demo's settings are its own: ``./capirelay.toml`` and ``CAPIRELAY_*``
variables are not read.  It writes them to ``capirelay-demo.toml`` (next to the
database; secrets in 0600 files in ``capirelay-demo-secrets/`` beside it) so other
commands can look at the demo's queue: ``capirelay dlq list --config capirelay-demo.toml``.

``--once`` sends the sample event, waits until the emulator has it, runs the
gateway's Meta diagnostics once (what the running demo does a minute after
start) and exits (used by the test suite and handy as a smoke test): 1 when the
event was not delivered, a check fails (named) or the diagnostics could not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

from capirelay.browser_ids import build_fbc
from capirelay.config import (
    DashboardSettings,
    IngestKey,
    PixelSettings,
    Secret,
    Settings,
)
from capirelay.demo._outcomes import Outcome, OutcomeRecorder, TracingEmulatorState
from capirelay.listen import bind_listener, listen_refusal
from capirelay.secret_files import new_token, toml_string, write_secret

__all__ = [
    "DEMO_PIXEL_ID",
    "DemoFiles",
    "DemoOptions",
    "demo_settings",
    "run_demo",
    "sample_event",
    "shop_page",
    "shop_url",
]

DEMO_PIXEL_ID = "1234567890"
DEMO_TOKEN = "emulator-token"  # the emulator's public demo token, not a Meta credential
DEMO_KEY_ENV = "CAPIRELAY_DEMO_INGEST_KEY"
DEMO_ADMIN_ENV = "CAPIRELAY_DEMO_ADMIN_TOKEN"
DEFAULT_INGEST_KEY = "demo-ingest-key"
# The click id of the demo's pretend Meta ad.  A real shop's ad traffic lands with
# ?fbclid=... and its orders carry the _fbc built from it; so do the demo's, and Meta's
# (the emulator's) Dataset Quality check has no missing click id to warn about.
DEMO_FBCLID = "IwAR0capirelayDemoAdClick"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    db_path: Path = Path("capirelay-demo.db")
    once: bool = False
    # The settings file the demo writes; default: the database's name with .toml.
    config_path: Path | None = None


@dataclass(frozen=True)
class DemoFiles:
    """Where the demo keeps its queue, its settings and its secrets (absolute paths)."""

    db: Path
    config: Path
    secrets: Path

    @classmethod
    def of(cls, options: DemoOptions) -> DemoFiles:
        db = options.db_path.absolute()
        config = (options.config_path or options.db_path.with_suffix(".toml")).absolute()
        return cls(db=db, config=config, secrets=config.with_name(config.stem + "-secrets"))


class _DemoSettings(Settings):
    """Settings from the demo's own values only: no ./capirelay.toml, no CAPIRELAY_* variables.

    Every demo event goes out under TEST_DEMO on purpose, so the start-up warning about a
    test_event_code left on would only puzzle a newcomer (``capirelay doctor`` on the
    written demo config still says it)."""

    test_events_intended: ClassVar[bool] = True

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any
    ) -> Any:
        return (init_settings,)


def demo_settings(options: DemoOptions, graph_url: str, files: DemoFiles | None = None) -> Settings:
    files = files or DemoFiles.of(options)
    origins = [f"http://{options.host}:{options.port}", f"http://localhost:{options.port}"]
    return _DemoSettings(
        storage=f"sqlite:///{files.db}",
        host=options.host,
        port=options.port,
        graph_url=graph_url,
        pixels={
            DEMO_PIXEL_ID: PixelSettings(
                access_token=Secret(file=files.secrets / "access-token"),
                test_event_code="TEST_DEMO",
                default_country="US",
                allowed_origins=origins,
            )
        },
        ingest_keys={"demo-backend": IngestKey(key=Secret(file=files.secrets / "ingest-key"))},
        dashboard=DashboardSettings(admin_token=Secret(file=files.secrets / "admin-token")),
        delivery={"linger_ms": 50},  # type: ignore[arg-type]
    )


def write_demo_config(settings: Settings, files: DemoFiles) -> None:
    """The demo's settings as a TOML file other commands can read (``--config``)."""
    pixel = settings.pixels[DEMO_PIXEL_ID]
    origins = ", ".join(toml_string(o) for o in pixel.allowed_origins)
    lines = [
        "# Written by `capirelay demo` on every start: the demo's own settings, so other",
        "# commands read the demo's queue, e.g. `capirelay dlq list --config "
        f"{files.config.name}`.",
        "# The demo does not read this file (nor ./capirelay.toml); edits are overwritten.",
        f"storage = {toml_string(settings.storage)}",
        f"host = {toml_string(settings.host)}",
        f"port = {settings.port}",
        f"graph_url = {toml_string(settings.graph_url)}  # this run's local Graph API emulator",
        "",
        f"[pixels.{DEMO_PIXEL_ID}]",
        f"access_token = {{ file = {toml_string(str(files.secrets / 'access-token'))} }}",
        'test_event_code = "TEST_DEMO"',
        'default_country = "US"',
        f"allowed_origins = [{origins}]",
        "",
        "[ingest_keys.demo-backend]",
        f"key = {{ file = {toml_string(str(files.secrets / 'ingest-key'))} }}",
        "",
        "[dashboard]",
        f"admin_token = {{ file = {toml_string(str(files.secrets / 'admin-token'))} }}",
        "",
        "[delivery]",
        "linger_ms = 50",
        "",
    ]
    files.config.parent.mkdir(parents=True, exist_ok=True)
    files.config.write_text("\n".join(lines), encoding="utf-8")


def shop_page(pixel_id: str) -> str:
    template = resources.files("capirelay.demo").joinpath("shop.html").read_text("utf-8")
    return template.replace("{{ pixel_id }}", pixel_id)


def shop_url(url: str) -> str:
    """The demo shop as a visitor from a Meta ad lands on it: with the ad's ``fbclid``."""
    return f"{url}/shop?fbclid={DEMO_FBCLID}"


def sample_event() -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_id": f"order-{int(time.time() * 1000)}",
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout/thank-you",
        "user_data": {
            "email": "Jane.Doe@Example.com",
            "phone": "(650) 555-1212",
            "first_name": "Jane",
            "last_name": "Doe",
            "city": "Menlo Park",
            "state": "California",
            "zip_code": "94025-1234",
            "country": "United States",
            "external_id": "customer-42",
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (demo)",
            "fbp": f"fb.1.{now_ms}.1098115397",
            # The shopper came from an ad click: the shop kept the _fbc cookie with the order.
            "fbc": build_fbc(DEMO_FBCLID, "shop.example", now_ms=now_ms),
        },
        "custom_data": {
            "value": 25.0,
            "currency": "EUR",
            "contents": [{"id": "TSHIRT-42", "quantity": 1, "item_price": 25.0}],
        },
    }


def curl_example(url: str, ingest_key: str) -> str:
    body = orjson.dumps(
        {
            "pixel_id": DEMO_PIXEL_ID,
            "data": [
                {
                    "event_name": "Lead",
                    "event_time": "NOW",
                    "action_source": "website",
                    "event_source_url": "https://shop.example/contact",
                    "user_data": {"email": "lead@example.com", "client_user_agent": "curl"},
                }
            ],
        }
    ).decode()
    # event_time must be recent: the shell fills it in when the command runs.
    body = body.replace('"NOW"', "'$(date +%s)'")
    return (
        f"curl -s {url}/v1/events -H {shlex.quote('Authorization: Bearer ' + ingest_key)} "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )


def _welcome(
    console: Console, url: str, emulator_url: str, files: DemoFiles, keys: dict[str, str]
) -> None:
    cwd_config = Path("capirelay.toml")
    lines = [
        ("capirelay demo", "bold green"),
        (f"  shop:      {shop_url(url)}  (as a visitor from a Meta ad)", ""),
        (f"  dashboard: {url}/ui/  token: {keys['admin']}", ""),
        (f"  ingest key: {keys['ingest']}   try:", ""),
        (f"    {curl_example(url, keys['ingest'])}", "dim"),
        (f"  Graph emulator {emulator_url}  (stands in for Meta)", ""),
        (f"  database:  {files.db}", ""),
        (f"  config:    {files.config}", ""),
        (f"    e.g. capirelay dlq list --config {_relative(files.config)}", "dim"),
    ]
    if cwd_config.is_file():
        note = f"  note: {cwd_config.absolute()} is NOT used by the demo (it has its own settings)"
        lines.append((note, ""))
    for text, style in lines:
        # One physical line each: long URLs and the curl command must stay copy-pasteable.
        console.print(Text(text, style=style), soft_wrap=True)
    _flush(console)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _flush(console: Console) -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        console.file.flush()


def _status_table(
    gateway: dict[str, Any], meta: dict[str, Any], recorder: OutcomeRecorder, url: str
) -> Table:
    table = Table(title=f"capirelay demo — shop at {url}/shop  ·  dashboard at {url}/ui/")
    table.add_column("where")
    table.add_column("what", justify="right")
    counts = recorder.counts
    table.add_row("gateway queue depth", str(gateway.get("depth", "?")))
    table.add_row("gateway dead-letter queue", str(gateway.get("dlq_size", "?")))
    table.add_row("events dropped by the gateway (bots, no consent)", str(counts.get("dropped", 0)))
    table.add_row("events rejected as invalid", str(counts.get("rejected", 0)))
    table.add_row("emulator (Meta) events accepted", str(meta.get("events_accepted", "?")))
    table.add_row("emulator duplicates dropped (48 h rule)", str(meta.get("duplicates", "?")))
    recent = recorder.recent()
    if recent:
        table.add_section()
        for outcome in recent:
            table.add_row(
                f"{outcome.event_name} {outcome.event_id} ({outcome.source})",
                Text(outcome.describe(), style=_STATUS_STYLES.get(outcome.status, "")),
            )
    return table


_STATUS_STYLES = {"delivered": "green", "dropped": "yellow", "rejected": "red"}


async def _poll(client: httpx.AsyncClient, outbox: Any, emulator_url: str) -> tuple[dict, dict]:
    stats = await outbox.stats(now=time.time())
    meta = (await client.get(f"{emulator_url}/_emulator/stats")).json()
    return {"depth": stats.depth, "dlq_size": stats.dlq_size}, meta


def _free_port(host: str) -> int:
    """A port nothing listens on at ``host`` now (the kernel's pick)."""
    with bind_listener(host, 0) as probe:
        return int(probe.getsockname()[1])


def _install_stop_handlers(stop: asyncio.Event) -> dict[int, Any]:
    """Ctrl-C / SIGTERM end the demo normally (exit 0), not with a KeyboardInterrupt.

    uvicorn captures both signals while it serves and re-raises them afterwards;
    re-raised into these handlers they are a no-op, so ``make run`` ends cleanly.
    """
    if sys.platform == "win32":
        return {}
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(stop.set)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        return {}
    return previous


async def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    import uvicorn

    from capirelay.emulator.testing import run_emulator
    from capirelay.server import create_app

    console = console or Console()
    if options.port == 0:
        # Any free port: chosen here, because the shop's origin, the URLs printed and the
        # config written all name it.
        options = dataclasses.replace(options, port=_free_port(options.host))
    refusal = listen_refusal(options.host, options.port)
    if refusal is not None:
        console.print(
            refusal,
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 2
    files = DemoFiles.of(options)
    keys = {
        "ingest": os.environ.get(DEMO_KEY_ENV, "").strip() or DEFAULT_INGEST_KEY,
        "admin": os.environ.get(DEMO_ADMIN_ENV, "").strip() or new_token(),
    }
    write_secret(files.secrets / "access-token", DEMO_TOKEN)
    write_secret(files.secrets / "ingest-key", keys["ingest"])
    write_secret(files.secrets / "admin-token", keys["admin"])
    stop = asyncio.Event()
    previous_handlers = _install_stop_handlers(stop)
    tracer = TracingEmulatorState(pixels={DEMO_PIXEL_ID: DEMO_TOKEN})
    try:
        with run_emulator(state=tracer) as emulator:
            settings = demo_settings(options, emulator.url, files)
            write_demo_config(settings, files)
            app = create_app(settings)
            recorder = OutcomeRecorder(app, tracer)
            _add_demo_routes(app, recorder)
            config = uvicorn.Config(
                recorder, host=options.host, port=options.port, log_level="warning", lifespan="on"
            )
            server = uvicorn.Server(config)
            serve_task = asyncio.create_task(server.serve())
            serve_task.add_done_callback(lambda _: stop.set())
            while not server.started:
                if serve_task.done():
                    with contextlib.suppress(SystemExit):  # uvicorn exits on a failed start
                        await serve_task
                    console.print("the demo gateway did not start (see the message above)")
                    return 1
                await asyncio.sleep(0.05)
            url = f"http://{options.host}:{options.port}"
            _welcome(console, url, emulator.url, files, keys)
            try:
                return await _run(options, console, app, recorder, url, emulator.url, keys, stop)
            finally:
                server.should_exit = True
                await serve_task
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


async def _run(
    options: DemoOptions,
    console: Console,
    app: Any,
    recorder: OutcomeRecorder,
    url: str,
    emulator_url: str,
    keys: dict[str, str],
    stop: asyncio.Event,
) -> int:
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.post(
            f"{url}/v1/events",
            headers={"Authorization": f"Bearer {keys['ingest']}"},
            json={"pixel_id": DEMO_PIXEL_ID, "data": [sample_event()]},
        )
        console.print(
            f"sample server event: HTTP {response.status_code} {response.json()}", soft_wrap=True
        )
        if options.once:
            console.print("--once: waiting for the sample event to reach the emulator, then exit")
            code = await _wait_for_delivery(client, emulator_url, console)
            if code == 0:
                code = await _diagnose_once(app, console)
            return code
        console.print(f"Open {shop_url(url)} and press Buy; Ctrl-C stops the demo.", soft_wrap=True)
        _flush(console)
        outbox = app.state.outbox
        if console.is_terminal:
            with Live(console=console, refresh_per_second=2) as live:
                while not stop.is_set():
                    gateway, meta = await _poll(client, outbox, emulator_url)
                    live.update(_status_table(gateway, meta, recorder, url))
                    await _wait(stop, POLL_SECONDS)
        else:
            await _log_lines(console, recorder, stop)
        console.print("demo stopped")
    return 0


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):  # cancellation-safe, unlike 3.11's wait_for
            await stop.wait()


async def _log_lines(console: Console, recorder: OutcomeRecorder, stop: asyncio.Event) -> None:
    """Not a terminal (nohup, a pipe, a log file): one flushed line per change of outcome."""
    shown: dict[str, str] = {}
    while not stop.is_set():
        for outcome in reversed(recorder.recent(limit=50)):
            if shown.get(outcome.event_id) != outcome.status:
                shown[outcome.event_id] = outcome.status
                console.print(_outcome_line(outcome), soft_wrap=True, highlight=False)
        _flush(console)
        await _wait(stop, POLL_SECONDS)


def _outcome_line(outcome: Outcome) -> str:
    return f"{outcome.event_name} {outcome.event_id} ({outcome.source}): {outcome.describe()}"


def _add_demo_routes(app: Any, recorder: OutcomeRecorder) -> None:
    async def shop(_: Request) -> HTMLResponse:
        return HTMLResponse(shop_page(DEMO_PIXEL_ID))

    async def root(_: Request) -> RedirectResponse:
        return RedirectResponse(shop_url(""))

    async def outcome(request: Request) -> JSONResponse:
        found = recorder.get(request.path_params["event_id"])
        if found is None:
            return JSONResponse({"status": "unknown"}, status_code=404)
        return JSONResponse(found.to_dict())

    app.add_route("/shop", shop, methods=["GET"])
    app.add_route("/", root, methods=["GET"])
    app.add_route("/demo/outcome/{event_id}", outcome, methods=["GET"])


async def _diagnose_once(app: Any, console: Console) -> int:
    """One run of the gateway's Meta diagnostics against the emulator (``--once``): 0 when
    it ran and no check fails, else 1, saying which check failed or why it did not run.
    The sample event was delivered by then, and the message says so."""
    runner = app.state.diagnostics
    if runner is None:
        return 0
    delivered = "the sample event was delivered (above)"
    try:
        runs = await runner.run_once()
    except Exception as exc:  # any failure is reported; the delivery still stands
        _say(console, f"Meta diagnostics could not run ({type(exc).__name__}: {exc}); {delivered}")
        return 1
    if runs is None:
        _say(
            console,
            "Meta diagnostics did not run: another capirelay process using this database "
            "holds their schedule, or held it and was killed (its hold then runs out within "
            "1.5 times diagnostics.interval_seconds; a demo on a fresh --db does not wait); "
            f"{delivered}",
        )
        return 1
    checks = [check for run in runs for check in run.checks if check.failing]
    failing = sorted({f"{check.key} ({check.title}: {check.message})" for check in checks})
    errors = [f"{step}: {why}" for run in runs for step, why in run.errors.items()]
    if not failing and not errors:
        _say(console, "Meta diagnostics: no check failing")
        return 0
    if failing:
        n = len(failing)
        _say(
            console,
            f"Meta diagnostics: {n} check{'s' if n > 1 else ''} failing: " + "; ".join(failing),
        )
    if errors:
        _say(console, "Meta diagnostics: could not run " + "; ".join(errors))
    _say(console, f"--once fails on that; {delivered}")
    return 1


def _say(console: Console, text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False, markup=False)


async def _wait_for_delivery(client: httpx.AsyncClient, emulator_url: str, console: Console) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = (
            await client.get(f"{emulator_url}/_emulator/pixels/{DEMO_PIXEL_ID}/events")
        ).json()
        if events.get("data"):
            wire = events["data"][0]
            console.print("delivered to the emulator (what Meta would see):")
            console.print_json(data=wire)
            return 0
        await asyncio.sleep(0.2)
    console.print("[red]the sample event did not reach the emulator within 30 s[/]")
    return 1
