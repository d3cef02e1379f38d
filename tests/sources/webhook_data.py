"""Signing helpers and fixture loading shared by the webhook tests: how each vendor signs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capirelay.sources.webhooks import generic, stripe

WEBHOOKS_DIR = Path(__file__).resolve().parents[2] / "src" / "capirelay" / "sources" / "webhooks"


def fixture(preset: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (WEBHOOKS_DIR / preset / "fixtures" / name).read_text(encoding="utf-8")
    )
    return data


def fixture_bytes(preset: str, name: str) -> bytes:
    return (WEBHOOKS_DIR / preset / "fixtures" / name).read_bytes()


def base64_hmac(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_headers(
    body: bytes, secret: str, now: float, topic: str = "orders/paid"
) -> dict[str, str]:
    return {"X-Shopify-Hmac-Sha256": base64_hmac(body, secret), "X-Shopify-Topic": topic}


def woocommerce_headers(
    body: bytes, secret: str, now: float, topic: str = "order.created"
) -> dict[str, str]:
    return {"X-WC-Webhook-Signature": base64_hmac(body, secret), "X-WC-Webhook-Topic": topic}


def stripe_headers(body: bytes, secret: str, now: float, topic: str = "") -> dict[str, str]:
    return {"Stripe-Signature": stripe.sign(body, secret, int(now))}


def generic_headers(body: bytes, secret: str, now: float, topic: str = "") -> dict[str, str]:
    headers = {"X-Capirelay-Signature": generic.sign(body, secret)}
    if topic:
        headers["X-Capirelay-Topic"] = topic
    return headers


Signer = Callable[..., dict[str, str]]

SIGNERS: dict[str, Signer] = {
    "shopify": shopify_headers,
    "woocommerce": woocommerce_headers,
    "stripe": stripe_headers,
    "mapping": generic_headers,
}

SIGNATURE_HEADERS = {
    "shopify": "X-Shopify-Hmac-Sha256",
    "woocommerce": "X-WC-Webhook-Signature",
    "stripe": "Stripe-Signature",
    "mapping": "X-Capirelay-Signature",
}
