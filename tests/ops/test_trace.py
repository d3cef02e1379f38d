"""ops/trace.py decides a receipt's story from its structured fields (outcome and the
rejection's problem codes), never from the wording of its ``reason`` text."""

from __future__ import annotations

from capirelay.ops.trace import iso, status_of, story
from capirelay.outbox.receipts import (
    MetaAnswer,
    Receipt,
    TraceRecord,
    delivered_receipt,
    dropped_receipt,
)
from capirelay.problems import error
from capirelay.server.routes_webhooks import RECEIPT_PROBLEMS, _receipt_problems

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
    # The one word of the heading (and of the JSON's status) says what the story says.
    assert status_of(record) == "rejected"


def test_a_policy_drop_whose_reason_starts_with_rejected_is_still_a_drop() -> None:
    drop = dropped_receipt(
        pixel_id=PIXEL, event_name="Lead", event_id="e2", source="collect",
        reason="rejected_by_consent", now=T0,
    )  # fmt: skip
    [step] = story(TraceRecord("e2", [drop]))
    assert step.what == "dropped"
    assert status_of(TraceRecord("e2", [drop])) == "dropped"


def test_a_rejection_an_older_replica_wrote_without_problems_is_still_a_rejection() -> None:
    # During a rolling upgrade a replica of the version before 0016 goes on writing the
    # codes only in the reason, after the migration gave the older rows their problems.
    older = _rejected(
        "rejected (missing_field, event_too_old): currency is required", [], T0 + 9 * 86400
    )
    assert older.problem_codes == ("missing_field", "event_too_old")
    assert older.rejected_at_ingest
    [step] = [s for s in story(TraceRecord("shopify:1:Purchase", [_delivered(), older]))
              if s.what == "rejected"]  # fmt: skip
    assert f"already delivered to Meta at {iso(T0 + 1)}" in step.detail
    [told] = story(TraceRecord("e1", [_rejected("rejected (missing_field): no currency", [], T0)]))
    assert "(missing_field): no currency" in told.detail
    # Only the migrations' grammar is read: a policy's own code never is.
    for reason in ("rejected_by_consent", "rejected (Bot!): x", "rejected ()", "bot"):
        drop = _rejected(reason, [], T0)
        assert drop.problem_codes == () and not drop.rejected_at_ingest, reason


def test_a_rejection_keeps_every_code_it_was_rejected_for() -> None:
    errors = [error("invalid_value", f"custom_data.contents.{n}.id", "bad id")
              for n in range(RECEIPT_PROBLEMS + 5)]  # fmt: skip
    errors.append(error("event_too_old", "event_time", "too old"))
    errors.append(error("invalid_value", "custom_data.value", "not a number"))
    kept = _receipt_problems(errors)
    assert [p["code"] for p in kept] == ["invalid_value"] * RECEIPT_PROBLEMS + ["event_too_old"]
    assert kept[-1] == {"code": "event_too_old", "field": "event_time", "severity": "error",
                        "message": ""}  # fmt: skip
    receipt = _rejected("rejected (invalid_value, event_too_old): bad id", kept, T0 + 9 * 86400)
    [step] = [s for s in story(TraceRecord("shopify:1:Purchase", [_delivered(), receipt]))
              if s.what == "rejected"]  # fmt: skip
    assert "nothing to do" in step.detail
