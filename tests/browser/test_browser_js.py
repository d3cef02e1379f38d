"""The snippet's own reading of ``_fbp``/``_fbc`` in headless Chromium, against the gateway's.

A page on ``shop.example.com`` (served by Playwright's router, no gateway) loads
the shipped ``browser.js``; each test plants one cookie value, calls
``capirelay.track`` and reads the beacon the snippet posts.  The snippet sends
a valid ``_fbp``/``_fbc`` as it is and leaves out one it finds invalid; which it
did must be what :func:`capirelay.browser_ids.parse_fbp` /
:func:`~capirelay.browser_ids.parse_fbc` answer for the same text: a looser page
sends cookies the gateway refuses.  Either way the cookie stays as it was: it is
the pixel's, and the snippet writes one only where there is none (``_fbc``: or
one of an older click, as the pixel does).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chromium import NEEDS_CHROMIUM

pytestmark = NEEDS_CHROMIUM

from playwright.sync_api import BrowserContext, Route  # noqa: E402

from capirelay.browser_ids import parse_fbc, parse_fbp  # noqa: E402
from capirelay.meta_facts import BUILDER_LEGACY_APPENDIX_TOKENS  # noqa: E402
from capirelay.sources.snippet import snippet_source  # noqa: E402

SHOP = "http://shop.example.com"
PAGE = (
    f'<html><body><script src="{SHOP}/capirelay.js" data-pixel-id="1234567890">'
    "</script></body></html>"
)
BASE = "fb.1.1700000000000"
# The builder's appendixes (8 characters, or a legacy language token) and near misses.
APPENDIXES = [
    *sorted(BUILDER_LEGACY_APPENDIX_TOKENS),
    "AQIAAQMC",
    "AQICAQMC",
    "a-b_C9zZ",
    "Zz",  # 2 characters, no builder's language
    "aq",  # a token's letters in the wrong case
    "abc",
    "AQIAA",
    "AQIAAQM",  # 7
    "AQIAAQMCX",  # 9
    "AQIA.QMC",
]
FBP_VALUES = [
    f"{BASE}.1234567890",
    *(f"{BASE}.1234567890.{appendix}" for appendix in APPENDIXES),
    f"{BASE}.1234567890.AQIAAQMC.AQ",
    "fb.1.1700000000000",
    "fb.1.1700000000000.12ab",
    "fb.1234.1700000000000.1",
    "fb.1.12345678901234567.1",
    "fb.1.1700000000000.123456789012345678901",
    "fb.x.1700000000000.1",
]
FBC_VALUES = [
    f"{BASE}.IwAR123abc",
    *(f"{BASE}.IwAR123abc.{appendix}" for appendix in APPENDIXES),
    f"{BASE}.IwAR123abc.AQIAAQMC.AQ",
    f"{BASE}.IwAR+123",
    "fb.1.1700000000000",
    "fb.1.1700000000000.",
    "fb.1234.1700000000000.IwAR",
]


def _beacon(
    context: BrowserContext, name: str, value: str, query: str = ""
) -> tuple[dict[str, Any], str | None]:
    """What the snippet puts in ``user_data`` on a page (``/`` + ``query``) whose cookie
    ``name`` holds ``value``, and what that cookie holds after the beacon."""
    # Planted as the pixel writes it: on the site's registrable domain.
    context.add_cookies([{"name": name, "value": value, "domain": ".example.com", "path": "/"}])
    page = context.new_page()
    page.route(
        lambda url: url.split("?")[0] == f"{SHOP}/",
        lambda route: route.fulfill(content_type="text/html", body=PAGE),
    )
    page.route(
        f"{SHOP}/capirelay.js",
        lambda route: route.fulfill(content_type="application/javascript", body=snippet_source()),
    )

    def collect(route: Route) -> None:
        route.fulfill(status=204)

    page.route(f"{SHOP}/v1/collect", collect)
    page.goto(f"{SHOP}/{query}")
    page.wait_for_function("window.capirelay && window.capirelay.version")
    with page.expect_request(f"{SHOP}/v1/collect") as beacon:
        page.evaluate("capirelay.track('PageView')")
    body = json.loads(beacon.value.post_data or "{}")
    user_data: dict[str, Any] = body.get("user_data", {})
    after = [c.get("value") for c in context.cookies(SHOP) if c.get("name") == name]
    return user_data, after[0] if after else None


def _beacon_user_data(context: BrowserContext, name: str, value: str) -> dict[str, Any]:
    return _beacon(context, name, value)[0]


@pytest.mark.parametrize("value", FBP_VALUES)
def test_the_snippet_keeps_an_fbp_exactly_when_the_gateway_would(
    context: BrowserContext, value: str
) -> None:
    kept = _beacon_user_data(context, "_fbp", value).get("fbp") == value
    assert kept == (parse_fbp(value) is not None)


@pytest.mark.parametrize("value", FBC_VALUES)
def test_the_snippet_sends_an_fbc_exactly_when_the_gateway_would_take_it(
    context: BrowserContext, value: str
) -> None:
    sent = _beacon_user_data(context, "_fbc", value).get("fbc")
    assert sent in (value, None)
    assert (sent == value) == (parse_fbc(value) is not None)


@pytest.mark.parametrize(
    ("name", "value", "query"),
    [
        *(("_fbp", value, "") for value in FBP_VALUES if parse_fbp(value) is None),
        # A landing with the click the cookie already holds: the pixel's _fbc stays.
        *(
            ("_fbc", f"{BASE}.IwAR123abc.{appendix}", "?fbclid=IwAR123abc")
            for appendix in APPENDIXES
            if parse_fbc(f"{BASE}.IwAR123abc.{appendix}") is None
        ),
    ],
)
def test_a_cookie_the_gateway_would_refuse_is_left_out_and_never_rewritten(
    context: BrowserContext, name: str, value: str, query: str
) -> None:
    """The stricter grammar made the snippet overwrite the pixel's own cookie when its
    appendix had 3 to 7 characters; it now leaves the value out of the beacon instead."""
    user_data, after = _beacon(context, name, value, query)
    assert after == value, "the pixel's cookie was rewritten"
    assert name.lstrip("_") not in user_data


def test_a_new_click_still_replaces_the_fbc_of_an_older_one(context: BrowserContext) -> None:
    # As the pixel does: the landing's fbclid is the click to attribute.
    user_data, after = _beacon(context, "_fbc", f"{BASE}.IwARold.AQIAAQMC", "?fbclid=IwARnew")
    assert after is not None and after.endswith(".IwARnew")
    assert user_data["fbc"] == after


def test_without_a_cookie_the_snippet_writes_one_fbp_and_sends_it(context: BrowserContext) -> None:
    user_data, after = _beacon(context, "_other", "x")
    fbp = [c.get("value") for c in context.cookies(SHOP) if c.get("name") == "_fbp"]
    assert fbp and user_data["fbp"] == fbp[0] and parse_fbp(fbp[0]) is not None
    assert after == "x"
