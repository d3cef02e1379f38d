"""Each preset's signature check, as a table of pass/fail cases on the raw bytes."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from capirelay.sources.webhooks import PRESETS, SignatureError, get_preset
from capirelay.sources.webhooks import stripe as stripe_preset

from .webhook_data import SIGNATURE_HEADERS, SIGNERS, fixture_bytes

SECRET = "whsec_test_0123456789abcdef"
NOW = 1_710_524_600.0
TOLERANCE = 300

BODIES = {
    "shopify": fixture_bytes("shopify", "orders_paid.json"),
    "woocommerce": fixture_bytes("woocommerce", "order_processing.json"),
    "stripe": fixture_bytes("stripe", "checkout_session_completed.json"),
    "mapping": b'{"topic": "deal.stage_changed", "deal": {"id": 4, "amount_cents": 129900}}',
}


def lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def verify(preset: str, body: bytes, headers: Mapping[str, str], *, now: float = NOW) -> None:
    PRESETS[preset].verify(body, lower(headers), SECRET, now=now, tolerance_seconds=TOLERANCE)


@pytest.mark.parametrize("preset", sorted(BODIES))
def test_a_valid_signature_passes(preset: str) -> None:
    body = BODIES[preset]
    verify(preset, body, SIGNERS[preset](body, SECRET, NOW))


@pytest.mark.parametrize("preset", sorted(BODIES))
def test_a_tampered_body_fails(preset: str) -> None:
    body = BODIES[preset]
    headers = SIGNERS[preset](body, SECRET, NOW)
    tampered = body.replace(b"4", b"5", 1)
    assert tampered != body
    with pytest.raises(SignatureError):
        verify(preset, tampered, headers)


@pytest.mark.parametrize("preset", sorted(BODIES))
def test_a_signature_made_with_another_secret_fails(preset: str) -> None:
    body = BODIES[preset]
    with pytest.raises(SignatureError) as caught:
        verify(preset, body, SIGNERS[preset](body, "some-other-secret", NOW))
    assert SECRET not in caught.value.reason


@pytest.mark.parametrize("preset", sorted(BODIES))
def test_a_missing_signature_header_fails(preset: str) -> None:
    body = BODIES[preset]
    headers = SIGNERS[preset](body, SECRET, NOW)
    del headers[SIGNATURE_HEADERS[preset]]
    with pytest.raises(SignatureError, match="missing"):
        verify(preset, body, headers)


@pytest.mark.parametrize("preset", sorted(BODIES))
def test_re_serialized_json_fails_because_the_raw_bytes_are_signed(preset: str) -> None:
    body = BODIES[preset]
    headers = SIGNERS[preset](body, SECRET, NOW)
    with pytest.raises(SignatureError):
        verify(preset, body.strip() + b"\n\n", headers)


STRIPE_BODY = BODIES["stripe"]


def stripe_v1(timestamp: int, secret: str = SECRET) -> str:
    return stripe_preset.sign(STRIPE_BODY, secret, timestamp).split(",")[1]


STRIPE_HEADER_CASES: list[tuple[str, str, float, str | None]] = [
    ("fresh", f"t={int(NOW)},{stripe_v1(int(NOW))}", NOW, None),
    ("just inside tolerance", f"t={int(NOW) - 299},{stripe_v1(int(NOW) - 299)}", NOW, None),
    ("stale", f"t={int(NOW) - 301},{stripe_v1(int(NOW) - 301)}", NOW, "more than 300 s"),
    ("from the future", f"t={int(NOW) + 400},{stripe_v1(int(NOW) + 400)}", NOW, "more than 300 s"),
    (
        "secret being rolled: one of two v1 matches",
        f"t={int(NOW)},{stripe_v1(int(NOW), 'old-secret')},{stripe_v1(int(NOW))}",
        NOW,
        None,
    ),
    (
        "v0 only is not enough",
        f"t={int(NOW)},v0={stripe_v1(int(NOW)).removeprefix('v1=')}",
        NOW,
        "no v1",
    ),
    ("no timestamp", stripe_v1(int(NOW)), NOW, "no t="),
    ("non-numeric timestamp", f"t=yesterday,{stripe_v1(int(NOW))}", NOW, "non-numeric"),
    (
        "timestamp not the signed one",
        f"t={int(NOW) - 10},{stripe_v1(int(NOW))}",
        NOW,
        "no v1 in Stripe-Signature matches",
    ),
]


@pytest.mark.parametrize(
    ("header_value", "now", "failure"),
    [case[1:] for case in STRIPE_HEADER_CASES],
    ids=[case[0] for case in STRIPE_HEADER_CASES],
)
def test_stripe_signature_header(header_value: str, now: float, failure: str | None) -> None:
    headers = {"stripe-signature": header_value}
    if failure is None:
        verify("stripe", STRIPE_BODY, headers, now=now)
    else:
        with pytest.raises(SignatureError, match=failure):
            verify("stripe", STRIPE_BODY, headers, now=now)


@pytest.mark.parametrize(
    ("body", "is_ping"),
    [
        (b"webhook_id=14", True),
        (b"webhook_id=14\n", True),
        (b"webhook_id=", False),
        (b"webhook_id=14&status=paid", False),
        (BODIES["woocommerce"], False),
    ],
)
def test_woocommerce_ping_is_exactly_the_webhook_id_form(body: bytes, is_ping: bool) -> None:
    assert PRESETS["woocommerce"].is_ping(body, {}) is is_ping
    assert PRESETS["shopify"].is_ping(body, {}) is False


@pytest.mark.parametrize(
    ("preset", "headers", "payload", "topic"),
    [
        ("shopify", {"x-shopify-topic": "orders/paid"}, {}, "orders/paid"),
        ("woocommerce", {"x-wc-webhook-topic": "order.updated"}, {}, "order.updated"),
        ("stripe", {}, {"type": "payment_intent.succeeded"}, "payment_intent.succeeded"),
        ("stripe", {}, ["not an event"], None),
        ("mapping", {"x-capirelay-topic": "deal.won"}, {}, "deal.won"),
        ("mapping", {}, {}, None),
    ],
)
def test_topic(preset: str, headers: dict[str, str], payload: object, topic: str | None) -> None:
    assert PRESETS[preset].topic(headers, payload) == topic


@pytest.mark.parametrize(
    ("preset", "payload", "flag"),
    [
        ("shopify", {"test": True}, "test: true"),
        ("shopify", {"test": False}, None),
        ("shopify", {}, None),
        ("shopify", {"test": "true"}, None),  # only Shopify's boolean
        ("stripe", {"livemode": False}, "livemode: false"),
        ("stripe", {"livemode": True}, None),
        ("stripe", {}, None),
        ("stripe", ["not an event"], None),
        # WooCommerce's REST v3 order documents no test flag.
        ("woocommerce", {"status": "processing", "test": True}, None),
        ("mapping", {"test": True, "livemode": False}, None),
    ],
)
def test_test_mode(preset: str, payload: object, flag: str | None) -> None:
    assert PRESETS[preset].test_mode(payload) == flag


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="shopify, stripe, woocommerce"):
        get_preset("magento")
