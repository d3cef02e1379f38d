"""Every endpoint that is not public refuses a missing and a wrong credential, and does no
work for it.  The route table is read from the app itself: a route added later that is not
listed as public and has no credential check fails ``test_every_route_is_classified``.

Public by design: the beacon (``/v1/collect``, CORS-restricted, carries no secret), the
snippet, health, readiness, metrics (no identifiers, no secrets: see test_pii_scan.py), the
OpenAPI document, and the dashboard's login form and static files.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route

from capirelay.config import Settings
from capirelay.server import create_app
from loopback import another_client
from reliability.harness import ADMIN_TOKEN, INGEST_KEY, RecordedEmulator, queue_depth

from .conftest import PRESETS

PUBLIC = {
    ("POST", "/v1/collect"),
    ("OPTIONS", "/v1/collect"),
    ("GET", "/capirelay.js"),
    ("GET", "/favicon.ico"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("GET", "/ui/static"),
    ("GET", "/ui"),  # a relative redirect to /ui/, which checks credentials
}
WRONG_AUTHORIZATIONS = {
    "missing": None,
    "bare-bearer": "Bearer",
    "wrong-bearer": "Bearer not-the-key-0123456789",
    "prefix-of-key": f"Bearer {INGEST_KEY[:-1]}",
    "key-plus-one": f"Bearer {INGEST_KEY}x",
    "admin-as-ingest": f"Bearer {ADMIN_TOKEN}x",
    "basic": "Basic " + base64.b64encode(f"admin:{INGEST_KEY}x".encode()).decode(),
    "no-scheme": "not-the-key",
}


def _concrete(path: str) -> str:
    return (
        path.replace("{dlq_id:row_id}", "1")
        .replace("{name}", "shop")
        .replace("{path:path}", "dashboard.css")
        .replace("{event_id:path}", "order-1001")
    )


def _walk(routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Route):
            path = _concrete(prefix + route.path)
            found |= {(m, path) for m in route.methods or () if m != "HEAD"}
        elif isinstance(route, Mount):
            if route.routes:
                found |= _walk(list(route.routes), prefix + route.path)
            else:
                found.add(("GET", prefix + route.path))
    return found


def route_table(settings: Settings) -> set[tuple[str, str]]:
    return _walk(list(create_app(settings).routes))


def guarded_routes(settings: Settings) -> list[tuple[str, str]]:
    return sorted(route_table(settings) - PUBLIC)


def test_every_route_is_classified(settings: Settings) -> None:
    guarded = guarded_routes(settings)
    known = {
        ("POST", "/v1/events"),
        ("GET", "/v1/events/order-1001"),  # an event's story, for ingest keys
        ("POST", "/v1/webhooks/shop"),
    }
    unexpected = [r for r in guarded if r not in known and not r[1].startswith("/ui/")]
    assert not unexpected, f"routes with no credential test: {unexpected}"
    assert ("POST", "/v1/events") in guarded
    assert len([r for r in guarded if r[1].startswith("/ui/")]) >= 10


def _refused(answer: httpx.Response) -> bool:
    if answer.status_code in (401, 403):
        return True
    return answer.status_code == 303 and answer.headers.get("location") == "/ui/login"


@pytest.mark.parametrize("authorization", WRONG_AUTHORIZATIONS.values(), ids=WRONG_AUTHORIZATIONS)
def test_every_guarded_route_refuses_missing_and_wrong_credentials(
    gateway: str, settings: Settings, meta: RecordedEmulator, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    body: dict[str, Any] = {"pixel_id": "1234567890", "data": []}
    for method, path in guarded_routes(settings):
        # Each from a client of its own: the dashboard locks a client out after five
        # wrong tokens (its login throttle), and every route's own refusal is the test.
        with another_client(timeout=10) as client:
            answer = client.request(
                method,
                gateway + path,
                headers=headers,
                json=body if path.startswith("/v1/") else None,
                data={"confirm": "yes", "csrf_token": "0" * 64}
                if path.startswith("/ui/")
                else None,
                follow_redirects=False,
            )
        assert _refused(answer), f"{method} {path} answered {answer.status_code}"
        assert INGEST_KEY not in answer.text and ADMIN_TOKEN not in answer.text
    assert queue_depth(gateway) == 0
    assert not meta.accepted_ids()


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize(
    "signature",
    ["", "sha256=00", base64.b64encode(b"\0" * 32).decode(), "t=1,v1=" + "0" * 64],
    ids=["empty", "hex-junk", "zero-hmac", "stripe-shape"],
)
def test_webhooks_refuse_forged_signatures_under_every_header(
    gateway: str, name: str, signature: str
) -> None:
    headers = {
        "X-Shopify-Hmac-Sha256": signature,
        "X-WC-Webhook-Signature": signature,
        "Stripe-Signature": signature,
        "X-Capirelay-Signature": signature,
        "X-Shopify-Topic": "orders/paid",
        "X-WC-Webhook-Topic": "order.updated",
    }
    answer = httpx.post(f"{gateway}/v1/webhooks/{name}", content=b"{}", headers=headers)
    assert answer.status_code == 401
