"""``capirelay mapping test``: what it prints and how it exits."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from capirelay.cli import app
from vendor_data import VENDORS_DIR

from .webhook_data import WEBHOOKS_DIR

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mappings" / "crm.toml"
SAMPLE = REPO / "examples" / "mappings" / "crm.sample.json"
SAMPLE_TIME = "2024-05-02T10:00:00Z"

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def mapping_test(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["mapping", "test", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_a_queueable_event_prints_summary_wire_and_exits_zero() -> None:
    code, out, _ = mapping_test(
        EXAMPLE, SAMPLE, "--topic", "contact.form_submitted", "--now", SAMPLE_TIME
    )
    assert code == 0, out
    assert "event 1 of 1 (rule 'form submitted'): Lead event_id=crm:sub_20240502_0042:Lead" in out
    assert "-> would be queued" in out
    assert "mapped (identifiers redacted):" in out
    assert '"email": "<redacted>"' in out
    assert "wire payload (normalized and hashed):" in out
    # The sample's primary address, normalized and hashed: never printed raw.
    assert '"em": [' in out
    assert "ana.pereira" not in out.lower()
    assert "+351" not in out
    assert "1 event(s): 1 would be queued, 0 rejected" in out


def test_a_rejected_event_lists_its_problems_and_exits_one() -> None:
    # Without --now the 2024 sample is older than Meta's 7-day window.
    code, out, _ = mapping_test(EXAMPLE, SAMPLE, "--topic", "contact.form_submitted")
    assert code == 1
    assert "-> REJECTED" in out
    assert "error   event_too_old [event_time]" in out
    assert "wire payload (normalized and hashed):" in out
    assert "0 would be queued, 1 rejected" in out


def test_no_matching_rule_is_not_an_error() -> None:
    code, out, _ = mapping_test(EXAMPLE, SAMPLE, "--topic", "contact.deleted", "--now", SAMPLE_TIME)
    assert code == 0
    assert "no rule matched (no_rule_for_topic)" in out
    assert "no rule of the mapping is for topic 'contact.deleted'" in out


def test_a_false_condition_names_the_rule_and_its_condition() -> None:
    # Shopify's documented sample order (its "Send test notification" payload) is voided.
    sample = VENDORS_DIR / "shopify_documented_order.json"
    code, out, _ = mapping_test("shopify", sample, "--topic", "orders/paid")
    assert code == 0, out
    assert "no rule matched (condition_false)" in out
    assert "rule 'order paid' only when financial_status == 'paid'" in out


def test_a_preset_name_uses_its_default_mapping_and_finds_stripes_topic_in_the_body() -> None:
    sample = WEBHOOKS_DIR / "stripe" / "fixtures" / "payment_intent_succeeded_jpy.json"
    code, out, _ = mapping_test("stripe", sample, "--now", "1710524600")
    assert code == 0, out
    assert "topic: payment_intent.succeeded" in out
    assert '"value": 5400.0' in out
    assert "event_id=stripe:pi_3OuY0a2eZvKYlo2C0jpyAAAA:Purchase" in out
    # The sample is a test-mode event: the webhook would not send it live.
    assert (
        "note: the payload says livemode: false: a stripe webhook sends it only under a "
        "test_event_code, and answers it 'ignored' (test_mode) when none is configured"
    ) in out


def test_mapping_problems_and_validation_problems_are_both_shown(tmp_path: Path) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text(
        '[[event]]\n[event.set]\nevent_name = "Purchase"\naction_source = "other"\n'
        '[event.map]\ncustom_data.value = { path = "total", transform = "float" }\n',
        encoding="utf-8",
    )
    sample = tmp_path / "s.json"
    sample.write_text(json.dumps({"total": "n/a"}), encoding="utf-8")
    code, out, _ = mapping_test(mapping, sample)
    assert code == 1
    assert "warning mapping_transform_failed [custom_data.value]" in out
    assert "error   purchase_missing_value [custom_data.value]" in out
    assert "error   invalid_currency [custom_data.currency]" in out


def test_a_broken_mapping_exits_two_naming_file_line_and_field(tmp_path: Path) -> None:
    mapping = tmp_path / "broken.toml"
    mapping.write_text(
        '[[event]]\n[event.set]\nevent_name = "Lead"\n[event.map]\nuser_data.emial = "email"\n',
        encoding="utf-8",
    )
    code, _, err = mapping_test(mapping, SAMPLE)
    assert code == 2
    assert f"{mapping}:5: event[0].map.user_data.emial: unknown user_data field" in err


def test_an_unknown_name_lists_the_presets(tmp_path: Path) -> None:
    code, _, err = mapping_test(tmp_path / "magento", SAMPLE)
    assert code == 2
    assert "cannot read" in err and "shopify" in err


def test_a_sample_that_is_not_json_exits_two(tmp_path: Path) -> None:
    sample = tmp_path / "bad.json"
    sample.write_text("{not json", encoding="utf-8")
    code, _, err = mapping_test(EXAMPLE, sample)
    assert code == 2
    assert "not valid JSON" in err


def test_a_bad_now_exits_two() -> None:
    code, _, err = mapping_test(EXAMPLE, SAMPLE, "--now", "last week")
    assert code == 2
    assert "--now" in err
