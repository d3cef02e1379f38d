"""ops/trace.py decides a receipt's story from its structured fields (outcome and the
rejection's problem codes), never from the wording of its ``reason`` text."""

from __future__ import annotations

from capirelay.ops.trace import iso, story
from capirelay.outbox.receipts import (
    MetaAnswer,
    Receipt,
    TraceRecord,
    delivered_receipt,
    dropped_receipt,
)

T0 = 1_800_000_000.0
PIXEL = "111"
TOO_OLD = {
    "code": "event_too_old",
    "field": "event_time",
    "severity": "error",
    "message": "event_time is more than 7 days in the past; a webhook cannot be sent sooner",
}


def _delivered() -> Receipt:
    return delivered_receipt(
        pixel_id=PIXEL, event_name="Purchase", event_id="shopify:1:Purchase",
        source="webhook:shop", queued_at=T0, attempts=0, attempt_log=[],
        test_event_code=None, payload=b"{}",
        answer=MetaAnswer("Fpaid", 1, sent_at=T0 + 1), now=T0 + 2,
    )  # fmt: skip


def _rejected(reason: str, problems: list[dict[str, str]], at: float) -> Receipt:
    return dropped_receipt(
        pixel_id=PIXEL, event_name="Purchase", event_id="shopify:1:Purchase",
        source="webhook:shop", reason=reason, problems=problems, now=at,
    )  # fmt: skip


def test_a_too_old_resend_is_told_from_its_codes_whatever_the_reason_says() -> None:
    # The reason is for people; reworded, the story must not change.
    resend = _rejected("refused at ingest: the event is too old", [TOO_OLD], T0 + 9 * 86400)
    record = TraceRecord("shopify:1:Purchase", [_delivered(), resend])
    [step] = [s for s in story(record) if s.what == "rejected"]
    assert "event_too_old" in step.detail
    assert f"already delivered to Meta at {iso(T0 + 1)}" in step.detail
    assert "nothing to do" in step.detail


def test_a_rejection_is_not_told_as_a_policy_drop_whatever_the_reason_says() -> None:
    missing = {"code": "missing_field", "field": "custom_data.currency", "severity": "error",
               "message": "currency is required for Purchase"}  # fmt: skip
    record = TraceRecord("e1", [_rejected("Refused: currency missing", [missing], T0)])
    [step] = story(record)
    assert step.what == "rejected"
    assert "missing_field" in step.detail and "will not send it again" in step.detail


def test_a_policy_drop_whose_reason_starts_with_rejected_is_still_a_drop() -> None:
    drop = dropped_receipt(
        pixel_id=PIXEL, event_name="Lead", event_id="e2", source="collect",
        reason="rejected_by_consent", now=T0,
    )  # fmt: skip
    [step] = story(TraceRecord("e2", [drop]))
    assert step.what == "dropped"
