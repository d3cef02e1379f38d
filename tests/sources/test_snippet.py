"""``GET /capirelay.js``: what is served, how it caches, and what the script may and may not do.

Behaviour in a browser is tested for real in ``tests/browser``; here the
gateway serves the file over a loopback socket and the source is checked for
the promises a site owner relies on (ES5 only, small, no third-party calls).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import httpx
import pytest

from capirelay.config import Settings
from capirelay.server import create_app
from capirelay.sources.snippet import (
    SNIPPET_CACHE_CONTROL,
    SNIPPET_ETAG,
    SNIPPET_PATH,
    SNIPPET_STUB,
    page_snippet,
    snippet_source,
)
from server.conftest import gateway_settings, serve_in_thread

SIZE_BUDGET_BYTES = 8 * 1024  # grew with the first-party _fbp/_fbc handling, the stub replay
SOURCE = snippet_source().decode("utf-8")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CAPIRELAY_CONFIG", raising=False)
        db_path = tmp_path_factory.mktemp("snippet") / "capirelay.db"
        # Nothing is delivered here; the Graph URL is never called.
        yield gateway_settings(db_path, "http://127.0.0.1:9")


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def test_served_as_javascript_with_cache_validators(gateway: httpx.Client) -> None:
    response = gateway.get(SNIPPET_PATH)
    assert response.status_code == 200
    assert response.content == snippet_source()
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    assert response.headers["cache-control"] == SNIPPET_CACHE_CONTROL
    assert response.headers["etag"] == SNIPPET_ETAG
    assert response.headers["x-content-type-options"] == "nosniff"
    # The gateway's blanket "no-store" must not be added beside the snippet's own policy.
    assert response.headers.get_list("cache-control") == [SNIPPET_CACHE_CONTROL]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [
        (SNIPPET_ETAG, 304),
        (f"W/{SNIPPET_ETAG}", 304),
        (f'"older", {SNIPPET_ETAG}', 304),
        ("*", 304),
        ('"older"', 200),
        ("", 200),
    ],
)
def test_conditional_get(gateway: httpx.Client, if_none_match: str, status: int) -> None:
    response = gateway.get(SNIPPET_PATH, headers={"If-None-Match": if_none_match})
    assert response.status_code == status
    assert response.headers["etag"] == SNIPPET_ETAG
    if status == 304:
        assert response.content == b""


def test_head_answers_without_a_body(gateway: httpx.Client) -> None:
    response = gateway.head(SNIPPET_PATH)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["etag"] == SNIPPET_ETAG


def test_other_endpoints_keep_no_store(gateway: httpx.Client) -> None:
    assert gateway.get("/healthz").headers.get_list("cache-control") == ["no-store"]


def test_etag_is_the_content_hash() -> None:
    digest = hashlib.sha256(snippet_source()).hexdigest()
    assert SNIPPET_ETAG.strip('"') == digest[:32]


def test_small_enough_to_inline() -> None:
    assert len(snippet_source()) < SIZE_BUDGET_BYTES


# Syntax newer than ES5 that old browsers (and strict ES5 linters) refuse.
ES2015_PLUS = [
    ("arrow function", r"=>"),
    ("let/const", r"\b(let|const)\s"),
    ("template literal", r"`"),
    ("class", r"\bclass\s+\w"),
    ("spread/rest", r"\.\.\.\w"),
    ("async/await", r"\b(async|await)\s"),
    ("for-of", r"\bfor\s*\([^)]*\bof\b"),
]


@pytest.mark.parametrize(("feature", "pattern"), ES2015_PLUS, ids=[f for f, _ in ES2015_PLUS])
def test_es5_only(feature: str, pattern: str) -> None:
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", SOURCE, flags=re.DOTALL)
    assert not re.search(pattern, code), f"{feature} is not ES5"


@pytest.mark.parametrize(("feature", "pattern"), ES2015_PLUS, ids=[f for f, _ in ES2015_PLUS])
def test_the_pasted_stub_is_es5(feature: str, pattern: str) -> None:
    assert not re.search(pattern, SNIPPET_STUB), f"{feature} is not ES5"


def test_the_pasted_snippet_is_the_stub_then_the_async_tag() -> None:
    stub, tag = page_snippet("https://capi.shop.example/capirelay.js", "1234567890").split("\n")
    assert stub == f"<script>{SNIPPET_STUB}</script>"
    assert tag == (
        '<script src="https://capi.shop.example/capirelay.js" data-pixel-id="1234567890" '
        "async></script>"
    )
    # The stub defines nothing over a loaded snippet, and calls no host.
    assert SNIPPET_STUB.startswith("(function(w){if(w.capirelay)return;")
    assert "http" not in SNIPPET_STUB and "fetch" not in SNIPPET_STUB


def test_calls_no_third_party_host() -> None:
    # The only network call is to the gateway (endpoint from the script's own origin or init()).
    assert "http://" not in SOURCE and "https://" not in SOURCE
    assert SOURCE.count("sendBeacon(") == 1 and SOURCE.count("fetch(") == 1


def test_pixel_gets_only_the_event_and_its_id() -> None:
    # fbq receives the name, the custom-data params and {eventID}: never the user argument.
    [call] = re.findall(r"w\.fbq\((.*?)\);", SOURCE, flags=re.DOTALL)
    assert "user" not in call and "eventID: ev.id" in call
