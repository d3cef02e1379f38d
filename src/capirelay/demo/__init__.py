"""``capirelay demo``: the whole path on one machine, with nothing to configure.

It starts the local Graph API emulator (standing in for Meta), the gateway on
an embedded SQLite file, and a small shop page whose "Buy" button sends a
``Purchase`` through the browser beacon.  One server-to-server event is sent
at start so something flows immediately.  The terminal shows events moving
from ingest to the queue to "Meta".

``--once`` sends the sample event, waits until the emulator has it and exits
(used by the test suite and handy as a smoke test).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from capirelay.config import IngestKey, PixelSettings, Secret, Settings

DEMO_PIXEL_ID = "1234567890"
DEMO_TOKEN_ENV = "CAPIRELAY_DEMO_ACCESS_TOKEN"
DEMO_KEY_ENV = "CAPIRELAY_DEMO_INGEST_KEY"


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    db_path: Path = Path("capirelay-demo.db")
    once: bool = False


def demo_settings(options: DemoOptions, graph_url: str) -> Settings:
    origins = [f"http://{options.host}:{options.port}", f"http://localhost:{options.port}"]
    return Settings(
        storage=f"sqlite:///{options.db_path}",
        host=options.host,
        port=options.port,
        graph_url=graph_url,
        pixels={
            DEMO_PIXEL_ID: PixelSettings(
                access_token=Secret(env=DEMO_TOKEN_ENV),
                test_event_code="TEST_DEMO",
                default_country="US",
                allowed_origins=origins,
            )
        },
        ingest_keys={"demo-backend": IngestKey(key=Secret(env=DEMO_KEY_ENV))},
        delivery={"linger_ms": 50},  # type: ignore[arg-type]
    )


def shop_page(pixel_id: str) -> str:
    template = resources.files("capirelay.demo").joinpath("shop.html").read_text("utf-8")
    return template.replace("{{ pixel_id }}", pixel_id)


def sample_event() -> dict[str, Any]:
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
            "fbp": f"fb.1.{int(time.time() * 1000)}.1098115397",
        },
        "custom_data": {
            "value": 25.0,
            "currency": "EUR",
            "contents": [{"id": "TSHIRT-42", "quantity": 1, "item_price": 25.0}],
        },
    }


def _status_table(gateway: dict[str, Any], meta: dict[str, Any], url: str) -> Table:
    table = Table(title=f"capirelay demo — shop at {url}/  ·  metrics at {url}/metrics")
    table.add_column("where")
    table.add_column("what", justify="right")
    table.add_row("gateway queue depth", str(gateway.get("depth", "?")))
    table.add_row("gateway dead-letter queue", str(gateway.get("dlq_size", "?")))
    table.add_row("emulator (Meta) events accepted", str(meta.get("events_accepted", "?")))
    table.add_row("emulator duplicates dropped (48 h rule)", str(meta.get("duplicates", "?")))
    table.add_row("emulator requests", str(meta.get("requests", "?")))
    return table


async def _poll(client: httpx.AsyncClient, outbox: Any, emulator_url: str) -> tuple[dict, dict]:
    stats = await outbox.stats(now=time.time())
    meta = (await client.get(f"{emulator_url}/_emulator/stats")).json()
    return {"depth": stats.depth, "dlq_size": stats.dlq_size}, meta


async def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    import uvicorn

    from capirelay.emulator.testing import run_emulator
    from capirelay.server import create_app

    console = console or Console()
    token = os.environ.setdefault(DEMO_TOKEN_ENV, "demo-access-token")
    ingest_key = os.environ.setdefault(DEMO_KEY_ENV, "demo-ingest-key")
    with run_emulator(pixels={DEMO_PIXEL_ID: token}) as emulator:
        settings = demo_settings(options, emulator.url)
        app = create_app(settings)

        async def shop(_: Request) -> HTMLResponse:
            return HTMLResponse(shop_page(DEMO_PIXEL_ID))

        async def root(_: Request) -> RedirectResponse:
            return RedirectResponse("/shop")

        app.add_route("/shop", shop, methods=["GET"])
        app.add_route("/", root, methods=["GET"])
        config = uvicorn.Config(
            app, host=options.host, port=options.port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        serve_task = asyncio.create_task(server.serve())
        while not server.started:
            if serve_task.done():
                await serve_task
                return 1
            await asyncio.sleep(0.05)
        url = f"http://{options.host}:{options.port}"
        console.print(
            f"[bold green]capirelay demo[/] gateway {url}  ·  Graph emulator {emulator.url}"
        )
        console.print(f"Open [link={url}/shop]{url}/shop[/link] and press Buy.")
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.post(
                f"{url}/v1/events",
                headers={"Authorization": f"Bearer {ingest_key}"},
                json={"pixel_id": DEMO_PIXEL_ID, "data": [sample_event()]},
            )
            console.print(f"sample server event: HTTP {response.status_code} {response.json()}")
            try:
                if options.once:
                    return await _wait_for_delivery(client, emulator.url, console)
                outbox = app.state.outbox
                with Live(console=console, refresh_per_second=2) as live:
                    while not serve_task.done():
                        gateway, meta = await _poll(client, outbox, emulator.url)
                        live.update(_status_table(gateway, meta, url))
                        await asyncio.sleep(1.0)
            finally:
                server.should_exit = True
                await serve_task
    return 0


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
