"""The database goes away under a running replica: 503 and not ready, never a false 202;
back to 202 and delivery as soon as it returns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from pg_replicas import (
    ACCESS_TOKEN,
    INGEST_KEY,
    PIXEL_ID,
    deployment_env,
    purchase,
    replicas,
)

from capirelay.emulator.testing import RunningEmulator, run_emulator
from waiting import wait_for

# The replicas' database is this run's database (see tests/conftest.py); the switch is
# thrown from the server's maintenance database.
MAINTENANCE_DB = "postgres"


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as em:
        yield em


def set_database_available(database_url: str, available: bool) -> None:
    """ALLOW_CONNECTIONS off plus killing every session = the database is down for capirelay."""
    base, _, rest = database_url.rpartition("/")
    name = rest.split("?", 1)[0]
    with psycopg.connect(f"{base}/{MAINTENANCE_DB}", autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(available).lower()}')
        if not available:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


def post(client: httpx.Client, event_id: str) -> httpx.Response:
    body = {"pixel_id": PIXEL_ID, "data": [purchase(event_id, f"{event_id}@example.com")]}
    return client.post("/v1/events", json=body)


def test_database_down_is_503_then_recovers(
    emulator: RunningEmulator, postgres_database: str, postgres_url: str, tmp_path: Path
) -> None:
    settings_env = deployment_env(postgres_url, emulator.url)
    with (
        replicas(1, settings_env, tmp_path) as [replica],
        httpx.Client(
            base_url=replica.url, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=15
        ) as client,
    ):
        assert post(client, "before").status_code == 202
        set_database_available(postgres_database, False)
        try:
            down = [post(client, f"down-{i}") for i in range(2)]
            ready = client.get("/readyz")
        finally:
            set_database_available(postgres_database, True)
        assert [r.status_code for r in down] == [503, 503]
        assert all(r.headers.get("retry-after") for r in down)
        assert ready.status_code == 503

        def recovered() -> bool:
            answer = post(client, "after")
            assert answer.status_code in (202, 503), answer.status_code
            return answer.status_code == 202

        wait_for(recovered, 20, interval=0.2, what="the replica's recovery")
        assert client.get("/readyz").status_code == 200
        wait_for(
            lambda: (
                {"before", "after"}
                <= {e["event"]["event_id"] for e in emulator.state.events(PIXEL_ID)}
            ),
            20,
            interval=0.1,
            what="delivery after recovery",
        )
    delivered = [e["event"]["event_id"] for e in emulator.state.events(PIXEL_ID)]
    assert not any(event_id.startswith("down-") for event_id in delivered)
