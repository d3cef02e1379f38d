"""One body limit for every route: the OpenAPI document's and the dashboard's.

Over a raw socket, so the test controls exactly what is sent: a declared
``Content-Length`` beyond the limit is answered 413 before a body byte is sent,
and a chunked body that never ends is answered 413 as soon as it passes the
limit (the gateway never waits for, nor buffers, the rest).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from starlette.routing import Mount, Route

from capirelay.config import DashboardSettings, Secret, Settings, WebhookSettings
from capirelay.dashboard import create_dashboard
from capirelay.emulator.testing import RunningEmulator
from capirelay.metrics import Metrics
from capirelay.server import create_app
from capirelay.server.body_limit import SMALL_BODY_BYTES, body_limit
from capirelay.server.openapi import openapi_document

from .conftest import INGEST_KEY, PIXEL_ID, gateway_settings, serve_in_thread

ADMIN_TOKEN = "body-limit-admin-token-0123"
ADMIN_ENV = "CAPIRELAY_TEST_BODY_LIMIT_ADMIN"
WEBHOOK_ENV = "CAPIRELAY_TEST_BODY_LIMIT_WEBHOOK"
MAX_BODY = 64 * 1024
MAX_COLLECT = 4096


@pytest.fixture(scope="module")
def limit_settings(
    tmp_path_factory: pytest.TempPathFactory,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Settings:
    secrets_in_env.setenv(ADMIN_ENV, ADMIN_TOKEN)
    secrets_in_env.setenv(WEBHOOK_ENV, "webhook-secret")
    db = tmp_path_factory.mktemp("body-limits") / "capirelay.db"
    return gateway_settings(
        db,
        emulator.url,
        max_body_bytes=MAX_BODY,
        max_collect_body_bytes=MAX_COLLECT,
        dashboard=DashboardSettings(admin_token=Secret(env=ADMIN_ENV)),
        webhooks={
            "shop": WebhookSettings(
                preset="shopify", pixel_id=PIXEL_ID, secret=Secret(env=WEBHOOK_ENV)
            )
        },
    )


@pytest.fixture(scope="module")
def address(limit_settings: Settings) -> Iterator[tuple[str, int]]:
    with serve_in_thread(create_app(limit_settings)) as url:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        yield parts.hostname, parts.port


def every_route(settings: Settings) -> list[tuple[str, str]]:
    """(method, concrete path) for every operation of the OpenAPI document and the dashboard."""
    routes = []
    for path, operations in openapi_document()["paths"].items():
        concrete = path.replace("{name}", "shop")
        routes += [(method.upper(), concrete) for method in operations if method != "parameters"]
    dashboard = create_dashboard(settings, Metrics())
    assert dashboard is not None
    [mount] = [r for r in dashboard.routes() if isinstance(r, Mount)]
    routes.append(("GET", "/ui"))  # the relative redirect to /ui/
    for route in mount.routes:
        path = "/ui" + route.path.replace("{dlq_id:row_id}", "1")
        if isinstance(route, Route):
            routes += [(m, path) for m in sorted(route.methods or ()) if m != "HEAD"]
        else:
            routes.append(("GET", path + "/style.css"))
    return routes


def credentials(path: str) -> str:
    if path.startswith("/ui/"):
        return f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
    if path == "/v1/events":
        return f"Authorization: Bearer {INGEST_KEY}\r\n"
    return ""


def status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def routes_for_test() -> list[tuple[str, str]]:
    settings = Settings(
        storage="sqlite:///unused.db",
        dashboard=DashboardSettings(admin_token=Secret(env=ADMIN_ENV)),
    )
    return every_route(settings)


ROUTES = routes_for_test()


def test_the_route_list_covers_the_documented_and_dashboard_routes() -> None:
    paths = {path for _, path in ROUTES}
    assert {"/v1/events", "/v1/collect", "/v1/webhooks/shop", "/ui/login", "/ui/logout"} <= paths
    assert len(ROUTES) >= 20


def test_the_limits_table() -> None:
    settings = Settings(storage="sqlite:///x.db", max_body_bytes=9000, max_collect_body_bytes=2000)
    assert body_limit("/v1/events", settings) == 9000
    assert body_limit("/v1/webhooks/shop", settings) == 9000
    assert body_limit("/v1/collect", settings) == 2000
    assert body_limit("/ui/login", settings) == SMALL_BODY_BYTES
    assert body_limit("/healthz", settings) == SMALL_BODY_BYTES


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    address: tuple[str, int], method: str, path: str
) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: gateway\r\n{credentials(path)}"
            f"Content-Type: application/json\r\nContent-Length: 150000000\r\n\r\n".encode()
        )
        assert status_of(sock) == 413


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_a_chunked_body_that_never_ends_is_cut_off_at_the_limit(
    address: tuple[str, int], limit_settings: Settings, method: str, path: str
) -> None:
    limit = body_limit(path, limit_settings)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: gateway\r\n{credentials(path)}"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"a" * 4096
        sent = 0
        try:
            while sent <= limit + len(chunk):  # past the limit, and never the final chunk
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:
            pass  # the gateway answered and closed while we were still sending
        status = status_of(sock)
    if method == "POST":
        assert status == 413  # every POST route reads its body, through the limit
    else:
        assert status < 500  # a GET route answers without reading the body at all
