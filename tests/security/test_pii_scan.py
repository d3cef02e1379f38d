"""After a run with known raw identifiers, nothing the gateway wrote holds any of them in
clear, nor a secret.

The gateway runs as a child process at ``--log-level debug``, on SQLite or PostgreSQL,
and receives the same identifiers through every door: ``/v1/events`` (accepted and
rejected events), ``/v1/collect`` and a signed Shopify webhook.  Meta refuses some events
(dead letters with Meta's error) and, for a while, the token (auth errors in the logs).
Then everything is scanned:

* the process's stdout and stderr (every log line, access log included);
* the SQLite database, its WAL and shared-memory files, copied while the gateway runs
  and read again after it exits; or, on PostgreSQL, every row of every table as text;
* ``/metrics``; the dead-letter queue as ``capirelay dlq list`` and ``dlq show`` print it;
  the dashboard pages an operator sees (overview, errors, DLQ list and detail, test events,
  health).

Client IP addresses are not in the list: Meta wants ``client_ip_address`` unhashed, so
it is stored by design.  Hashed identifiers (email, phone, names, city, zip,
external_id) and every secret (access token, ingest key, admin token, webhook secret)
must not appear, in any letter case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from capirelay.emulator.faults import parse_fault
from reliability.harness import (
    ACCESS_TOKEN,
    ADMIN_TOKEN,
    INGEST_KEY,
    KNOWN_IDENTIFIERS,
    KNOWN_RAW_FORMS,
    PIXEL_ID,
    SECRET_ENV,
    SECRETS,
    GatewayProcess,
    RecordedEmulator,
    metric_total,
    purchase,
    queue_depth,
    recorded_emulator,
    write_config,
)
from sources.webhook_data import fixture, shopify_headers
from waiting import wait_for

from .conftest import SHOPIFY_SECRET

WEBHOOK_CONFIG = """
[webhooks.shop]
preset = "shopify"
pixel_id = "1234567890"
secret = { env = "RELIABILITY_SHOPIFY_SECRET" }

[dashboard]
admin_token = { env = "RELIABILITY_ADMIN_TOKEN" }
"""
REFUSED_BY_META = 3


@pytest.fixture
def meta() -> Iterator[RecordedEmulator]:
    with recorded_emulator() as emulator:
        yield emulator


@pytest.fixture
def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "postgres":
        with request.getfixturevalue("pg_schema")() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'capirelay.db'}"


def shopify_order_with_known_identifiers() -> dict[str, Any]:
    order = fixture("shopify", "orders_paid.json")
    who = KNOWN_IDENTIFIERS
    order.update(id=int(time.time_ns() % 10**12), email=who["email"], phone=who["phone"])
    order["contact_email"] = who["email"]
    order["processed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    order["customer"].update(
        email=who["email"], phone=who["phone"], first_name=who["first_name"],
        last_name=who["last_name"],
    )  # fmt: skip
    for address in ("billing_address", "shipping_address"):
        order[address].update(
            first_name=who["first_name"], last_name=who["last_name"], city=who["city"],
            zip=who["zip_code"], phone=who["phone"], country="United Kingdom", country_code="GB",
            name=f"{who['first_name']} {who['last_name']}",
        )  # fmt: skip
    return order


def drive_traffic(gateway: GatewayProcess, meta: RecordedEmulator) -> set[str]:
    """Every door, known identifiers through each; the ids Meta should end up with."""
    auth = {"Authorization": f"Bearer {INGEST_KEY}"}
    events = [purchase(f"pii-{i}-{time.time_ns()}", pii=True) for i in range(20)]
    refused = [e["event_id"] for e in events[:REFUSED_BY_META]]
    for event_id in refused:
        meta.state.faults.add(parse_fault({"kind": "invalid_event", "event_id": event_id}))
    rejected = purchase("pii-rejected", pii=True)
    del rejected["custom_data"]["currency"]  # Purchase without currency: refused at ingest
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        answer = client.post(
            "/v1/events", json={"pixel_id": PIXEL_ID, "data": [*events, rejected]}, headers=auth
        )
        assert answer.status_code == 202, answer.text
        statuses = [r["status"] for r in answer.json()["results"]]
        assert statuses.count("queued") == 20 and statuses[-1] == "rejected"

        beacon = client.post(
            "/v1/collect",
            json={
                "pixel_id": PIXEL_ID,
                "event_name": "Lead",
                "page_url": "https://shop.example/landing?fbclid=IwAR0pii",
                "user_data": {k: v for k, v in KNOWN_IDENTIFIERS.items()},
            },
            headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"},
        )
        assert beacon.status_code == 202, beacon.text

        body = json.dumps(shopify_order_with_known_identifiers()).encode()
        hook = client.post(
            "/v1/webhooks/shop",
            content=body,
            headers=shopify_headers(body, SHOPIFY_SECRET, time.time()),
        )
        assert hook.status_code == 200, hook.text
        # A bad signature and a bad key too: their refusals are logged.
        client.post("/v1/webhooks/shop", content=body, headers={"X-Shopify-Hmac-Sha256": "x"})
        client.post("/v1/events", json={"pixel_id": PIXEL_ID, "data": events}, headers={})

    delivered = {e["event_id"] for e in events[REFUSED_BY_META:]}
    return delivered | {beacon.json()["event_id"]}


def dlq_output(config: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
    env.update(SECRET_ENV)
    command = [str(Path(sys.executable).with_name("capirelay")), "dlq"]
    listed = subprocess.run(
        [*command, "list", "--config", str(config)], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0, listed.stderr
    shown = [
        subprocess.run(
            [*command, "show", str(dlq_id), "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        for dlq_id in range(1, REFUSED_BY_META + 2)
    ]
    return listed.stdout + listed.stderr + "".join(shown)


DASHBOARD_PAGES = ("/ui/", "/ui/errors", "/ui/dlq", "/ui/dlq/1", "/ui/test-events", "/ui/health")


def dashboard_pages(base_url: str) -> bytes:
    """What an operator sees: the dashboard pages, including a dead letter's detail."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    pages = [httpx.get(base_url + path, headers=headers, timeout=10) for path in DASHBOARD_PAGES]
    assert all(page.status_code == 200 for page in pages), [p.status_code for p in pages]
    return b"".join(page.content for page in pages)


def postgres_dump(storage_url: str) -> str:
    lines: list[str] = []
    with psycopg.connect(storage_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(f'SELECT t::text FROM "{table}" t').fetchall()
            lines += [f"{table}: {row[0]}" for row in rows]
    return "\n".join(lines)


def leaks(artifact: bytes) -> list[str]:
    """Every known identifier or secret found in ``artifact`` (case-insensitively)."""
    text = artifact.decode("utf-8", errors="replace").lower()
    return sorted({form for form in (*KNOWN_RAW_FORMS, *SECRETS) if form.lower() in text})


def test_nothing_the_gateway_wrote_holds_an_identifier_or_a_secret(
    meta: RecordedEmulator, storage: str, tmp_path: Path, backend: str, record_property: Any
) -> None:
    config = write_config(tmp_path, storage=storage, graph_url=meta.url, extra=WEBHOOK_CONFIG)
    gateway = GatewayProcess(config, tmp_path / "gateway.log", log_level="debug")
    artifacts: dict[str, bytes] = {}
    try:
        gateway.start()
        meta.state.revoke_token(ACCESS_TOKEN)
        expected = drive_traffic(gateway, meta)
        # A few auth failures and breaker probes get logged (the first refusal, two probes).
        wait_for(lambda: metric_total(gateway.url, "capirelay_graph_errors_total") >= 3, timeout=30)
        meta.state.restore_token(ACCESS_TOKEN)
        wait_for(lambda: expected <= meta.accepted_ids(), timeout=30)
        wait_for(lambda: queue_depth(gateway.url) == 0, timeout=30)
        artifacts["/metrics"] = httpx.get(f"{gateway.url}/metrics", timeout=10).content
        artifacts["dashboard pages"] = dashboard_pages(gateway.url)
        if backend == "sqlite":
            for path in tmp_path.glob("capirelay.db*"):
                copy = tmp_path / f"running-{path.name}"
                shutil.copyfile(path, copy)
                artifacts[f"{path.name} (while running)"] = copy.read_bytes()
    finally:
        gateway.stop()
    artifacts["dlq list/show"] = dlq_output(config).encode()
    artifacts["stdout+stderr"] = gateway.log_path.read_bytes()
    if backend == "sqlite":
        for path in tmp_path.glob("capirelay.db*"):
            artifacts[f"{path.name} (after exit)"] = path.read_bytes()
    else:
        artifacts["postgres tables"] = postgres_dump(storage).encode()

    # The scan must be looking at real content, and able to see a leak, or it proves nothing.
    assert KNOWN_IDENTIFIERS["email"] in leaks(KNOWN_IDENTIFIERS["email"].upper().encode())
    assert b"capirelay_events_accepted_total" in artifacts["/metrics"]
    assert b"2804050" in artifacts["dlq list/show"] or b"invalid" in artifacts["dlq list/show"]
    assert b"/v1/events" in artifacts["stdout+stderr"]
    found = {name: leaks(data) for name, data in artifacts.items()}
    scanned = sum(len(data) for data in artifacts.values())
    record_property("scanned_bytes", scanned)
    print(
        f"\nPII scan ({backend}): {len(artifacts)} artifacts, {scanned} bytes, "
        f"{len(KNOWN_RAW_FORMS)} identifier forms and {len(SECRETS)} secrets looked for, "
        f"{sum(len(v) for v in found.values())} found"
    )
    assert found == {name: [] for name in artifacts}
