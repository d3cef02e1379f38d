"""``POST /v1/webhooks/{name}``: signed notifications from shops and payment processors.

One configured webhook (``[webhooks.<name>]``: a preset, a pixel, a signing
secret, optionally a mapping file) per URL.  The order of work is what makes
it safe:

0. the sender's address and the webhook are rate limited
   (``capirelay.server.rate_limit``) before the body is read: a flood of
   forged requests is answered 429 without a single HMAC computed, and a
   real vendor retries a 429 later;
1. the raw body is read under the size limit and the vendor's signature is
   checked on those exact bytes, in constant time, before anything is parsed:
   a bad or missing signature is a 401 and nothing is queued;
2. the payload is parsed, its topic found, and the mapping applied; a payload
   that maps to no event is answered 200 ``"ignored"`` with the ``reason``
   (``no_rule_for_topic``: a refund; ``condition_false``: an unpaid order on
   ``orders/paid``, naming the rule and its ``when``) and logged at INFO with
   the order's event id, never a person's data; so is a vendor's test order
   (Shopify ``test: true``, Stripe ``livemode: false``) when no
   ``test_event_code`` is configured to send it under (``test_mode``): Meta
   does not drop test events, it counts them;
3. each mapped event goes through :func:`capirelay.ingest.prepare_event`
   (normalize, hash, validate) and the survivors are committed to the outbox
   in one call.  Their ids are derived from the vendor's order id, so a
   redelivery is answered ``"duplicate"`` and sent to Meta once.

Webhook senders retry anything but a 2xx, so an event rejected by validation
is still answered 200 (with its problems in the body and counted in metrics):
retrying cannot fix it.  Only a storage failure is a 503, so the vendor
retries and nothing is lost.

Mappings are compiled once, by :func:`load_webhooks` when the app is built,
so a broken mapping file stops the gateway at start with ``FILE:LINE:
FIELD`` instead of failing on the first order.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from capirelay.config import PixelSettings, Settings
from capirelay.ingest import PreparedEvent, prepare_event
from capirelay.limits import MAX_EVENT_NAME
from capirelay.metrics import Metrics
from capirelay.orders import ORDER_PRESETS, order_id_of
from capirelay.outbox.receipts import dropped_receipt
from capirelay.problems import Problem, error
from capirelay.server._commit import (
    STORAGE_RETRY_AFTER_SECONDS,
    commit_events,
    problems_json,
)
from capirelay.server._receipts import record_receipts
from capirelay.server.beacon_guard import limit_webhook
from capirelay.server.http import ApiError, JSONResponse, parse_json, read_body
from capirelay.sources.mapping import MappedEvent, SkippedRule, Unmapped
from capirelay.sources.webhooks import SignatureError
from capirelay.sources.webhooks._base import identifier_hint, webhook_advice
from capirelay.sources.webhooks.configured import ConfiguredWebhook, load_webhooks

__all__ = ["ConfiguredWebhook", "load_webhooks", "post_webhook"]  # the first two: re-exported

log = logging.getLogger("capirelay.webhooks")


async def post_webhook(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    metrics: Metrics = request.app.state.metrics
    webhooks: dict[str, ConfiguredWebhook] = request.app.state.webhooks
    webhook = webhooks.get(request.path_params["name"])
    if webhook is None:
        raise ApiError(
            404, "unknown_webhook", "no webhook of that name; see [webhooks] in the config"
        )
    pixel_id = webhook.settings.pixel_id
    limit_webhook(request, settings, webhook.name, pixel_id, signed=False)
    body = await read_body(request, settings.max_body_bytes)
    if webhook.preset.is_ping(body, request.headers):
        metrics.webhooks.labels(webhook.name, "ping").inc()
        return JSONResponse({"webhook": webhook.name, "status": "ping"})
    _verify(webhook, body, request, metrics)
    limit_webhook(request, settings, webhook.name, pixel_id, signed=True)
    payload = parse_json(body)
    topic = webhook.preset.topic(request.headers, payload)
    now = time.time()
    mapped = webhook.mapping.apply(payload, now=now, topic=topic)
    if not mapped:
        unmapped = webhook.mapping.unmapped(payload, topic=topic)
        return _ignored(webhook, topic, payload, unmapped, metrics)
    pixel = settings.pixels[webhook.settings.pixel_id]
    test_event_code = webhook.settings.test_event_code or pixel.test_event_code
    test_flag = webhook.preset.test_mode(payload)
    if test_flag is not None and test_event_code is None:
        return _ignored(webhook, topic, payload, _test_mode(webhook, test_flag, mapped), metrics)
    prepared = [_prepare(item, webhook, pixel, settings, now, test_event_code) for item in mapped]
    statuses = await commit_events(
        request.app.state, webhook.settings.pixel_id, prepared, now=now, source=webhook.source
    )
    metrics.webhooks.labels(webhook.name, "processed").inc()
    await _tell_rejections(request, webhook, mapped, prepared, statuses, now)
    results = [
        {
            "rule": item.rule,
            "event_name": item.event.get("event_name"),
            "event_id": ready.event_id,
            "status": status,
            "problems": problems_json(
                _with_hint(webhook, topic, [*item.problems, *ready.problems])
            ),
        }
        for item, ready, status in zip(mapped, prepared, statuses, strict=True)
    ]
    return JSONResponse(
        {"webhook": webhook.name, "topic": topic, "status": "processed", "results": results}
    )


async def _tell_rejections(
    request: Request,
    webhook: ConfiguredWebhook,
    mapped: list[MappedEvent],
    prepared: list[PreparedEvent],
    statuses: list[str],
    now: float,
) -> None:
    """A webhook's rejected event leaves a receipt and a log line: the vendor got a 200
    and will not retry, and nobody reads that answer, so `trace` and the log are where
    the order can still be found.  Problems name fields, never values.  The receipts of
    one delivery are stored in one write."""
    receipts = []
    for item, ready, status in zip(mapped, prepared, statuses, strict=True):
        if status != "rejected":
            continue
        errors = [p for p in ready.problems if p.is_error]
        codes = ", ".join(dict.fromkeys(p.code for p in errors)) or REJECTED
        first = errors[0].message if errors else ""
        log.warning(
            "webhook %s: event %s rejected (%s): %s",
            webhook.name,
            ready.event_id or "(no usable event_id)",
            codes,
            first,
            extra={"webhook": webhook.name, "result": "rejected"},
        )
        if ready.event_id:
            receipts.append(
                dropped_receipt(
                    pixel_id=webhook.settings.pixel_id,
                    event_name=_event_name(item.event.get("event_name")),
                    event_id=ready.event_id,
                    source=webhook.source,
                    reason=f"rejected ({codes}): {first}"[:500],
                    now=now,
                    order_id=order_id_of(item.event),
                    problems=_receipt_problems(errors),
                )
            )
    await record_receipts(request.app.state.outbox, receipts)


# The problem code a rejection stores when it carries no error of its own (none expected).
REJECTED = "rejected"
RECEIPT_PROBLEMS = 10


def _receipt_problems(errors: list[Problem]) -> list[dict[str, str | int]]:
    """What a rejection's receipt keeps of its errors: codes, fields and messages, which
    name fields and never hold values (``trace`` tells the story from the codes).  The
    first :data:`RECEIPT_PROBLEMS` are kept whole; after them, each code not seen yet is
    kept with its field and no message, so every code the event was rejected for is
    there (``event_too_old`` decides what ``trace`` tells, wherever it comes)."""
    seen = {problem.code for problem in errors[:RECEIPT_PROBLEMS]}
    later = []
    for problem in errors[RECEIPT_PROBLEMS:]:
        if problem.code not in seen:
            seen.add(problem.code)
            later.append(replace(problem, message=""))
    kept = problems_json(
        [replace(p, message=p.message[:500]) for p in errors[:RECEIPT_PROBLEMS]] + later
    )
    return kept or problems_json([error(REJECTED, "", "")])


def _event_name(value: Any) -> str:
    """The mapped event name for a receipt, where it is one a receipt can keep."""
    if isinstance(value, str) and 0 < len(value) <= MAX_EVENT_NAME and value.isprintable():
        return value
    return ""


def _ignored(
    webhook: ConfiguredWebhook,
    topic: str | None,
    payload: Any,
    unmapped: Unmapped,
    metrics: Metrics,
) -> Response:
    """200 ``"ignored"`` (the vendor must not retry), saying why; one INFO line."""
    metrics.webhooks.labels(webhook.name, "ignored").inc()
    ids = unmapped.event_ids or [_payload_id(payload)]
    log.info(
        "webhook %s: %s %s ignored (%s): %s",
        webhook.name,
        topic or "(no topic)",
        ", ".join(i for i in ids if i) or "(no id)",
        unmapped.reason,
        unmapped.message,
    )
    return JSONResponse(
        {
            "webhook": webhook.name,
            "topic": topic,
            "status": "ignored",
            "reason": unmapped.reason,
            "message": unmapped.message,
            "rules": [rule.to_dict() for rule in unmapped.rules],
            "results": [],
        }
    )


def _test_mode(webhook: ConfiguredWebhook, flag: str, mapped: list[MappedEvent]) -> Unmapped:
    """A vendor's test order with no test_event_code to send it under: not sent at all, since
    Meta counts an event without one as a real conversion (it does not drop test events)."""
    rules = tuple(
        SkippedRule(item.rule, None, _event_id(item.event.get("event_id"))) for item in mapped
    )
    return Unmapped(
        "test_mode",
        f"the payload says {flag}: a {webhook.preset.name} test, not a real sale, so it was not "
        "sent to Meta, which would count it as a live conversion; to see test orders in Events "
        f"Manager → Test events, set test_event_code in [webhooks.{webhook.name}] or "
        f"[pixels.{webhook.settings.pixel_id}]",
        rules,
    )


def _event_id(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# Vendors' own ids (Shopify's numeric ids, Stripe's evt_..., WooCommerce's post ids); an
# id shaped otherwise (an e-mail as a CRM's id) is not logged.
_LOGGABLE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _payload_id(payload: Any) -> str:
    found = payload.get("id") if isinstance(payload, dict) else None
    if isinstance(found, bool) or not isinstance(found, int | str):
        return ""
    text = str(found)
    return text if _LOGGABLE_ID.fullmatch(text) else ""


def _with_hint(
    webhook: ConfiguredWebhook, topic: str | None, problems: list[Problem]
) -> list[Problem]:
    hint = identifier_hint(webhook.preset, topic, problems)
    advised = webhook_advice(problems)
    return advised if hint is None else [*advised, hint]


def _verify(webhook: ConfiguredWebhook, body: bytes, request: Request, metrics: Metrics) -> None:
    secret = webhook.settings.secret.resolve()
    if secret is None:
        # The vendor retries a 503, so deliveries wait for the operator instead of being lost.
        log.error(
            "webhook %s: signing secret not found (%s)",
            webhook.name,
            webhook.settings.secret.describe(),
        )
        raise ApiError(
            503,
            "webhook_secret_missing",
            "this webhook's signing secret is not configured on the gateway yet; retry later",
            headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
        )
    try:
        webhook.preset.verify(
            body,
            request.headers,
            secret,
            now=time.time(),
            tolerance_seconds=webhook.settings.tolerance_seconds,
        )
    except SignatureError as exc:
        metrics.webhooks.labels(webhook.name, "unauthorized").inc()
        log.warning("webhook %s: signature refused: %s", webhook.name, exc.reason)
        raise ApiError(401, "invalid_signature", exc.reason) from None


def _prepare(
    item: MappedEvent,
    webhook: ConfiguredWebhook,
    pixel: PixelSettings,
    settings: Settings,
    now: float,
    test_event_code: str | None,
) -> PreparedEvent:
    return prepare_event(
        item.event,
        pixel_id=webhook.settings.pixel_id,
        pixel=pixel,
        now=now,
        test_event_code=test_event_code,
        source=webhook.source,
        max_future_skew=settings.max_future_skew,
        order_by_event_id=webhook.preset.name in ORDER_PRESETS,
    )
