"""Signed webhook sources for ``POST /v1/webhooks/{name}``: the preset registry.

Each source is a folder beside this file (Segment's action-destinations
shape): ``__init__.py`` with its signature check, topic and ``PRESET``,
``mapping.toml`` with its default declarative mapping, and ``fixtures/`` with
sample payloads shaped like the vendor's documented ones.  Adding a source is
adding a folder and one line in :data:`PRESETS`.

Event ids are derived from the vendor's order id, ``"{source}:{id}:{event}"``
(e.g. ``shopify:450789469:Purchase``), so a redelivered webhook is a
duplicate in the outbox's 48 h dedup and the shop's thank-you page can send
the same id with its pixel: ``fbq('track', 'Purchase', {...}, {eventID:
'shopify:' + order.id + ':Purchase'})``.
"""

from __future__ import annotations

from capirelay.sources.webhooks import generic, shopify, stripe, woocommerce
from capirelay.sources.webhooks._base import SignatureError, WebhookPreset

__all__ = ["PRESETS", "SignatureError", "WebhookPreset", "get_preset"]

PRESETS: dict[str, WebhookPreset] = {
    preset.name: preset
    for preset in (shopify.PRESET, woocommerce.PRESET, stripe.PRESET, generic.PRESET)
}


def get_preset(name: str) -> WebhookPreset:
    """The preset called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown webhook preset {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None
