"""The dashboard explains each Meta error by the class delivery gave it, not by the code
alone: without the HTTP status an unknown code (2200, 100 without a subcode) reads as a
transient failure ("no action needed") while delivery for the pixel is paused."""

from __future__ import annotations

from capirelay.dashboard.stats import ActivityRecorder
from capirelay.dashboard.views import _explain_group
from capirelay.graph import RetryClass, explain
from capirelay.metrics import Metrics

NO_ACTION = "no action needed"
PAUSED = "delivery for the pixel is paused"


def test_a_counted_unknown_error_is_explained_as_a_paused_pixel() -> None:
    metrics = Metrics()
    recorder = ActivityRecorder(metrics, clock=lambda: 1_700_000_000.0)
    metrics.meta_errors.labels("1", "2200", "None", str(RetryClass.UNKNOWN)).inc()
    recorder.sample()
    [key] = recorder.totals()
    assert key == ("graph_errors", "1", "", "2200/None/unknown")
    assert NO_ACTION in explain(2200, None)  # the code alone: what the page used to say
    assert PAUSED in explain(2200, None, retry_class="unknown")
    assert NO_ACTION not in explain(2200, None, retry_class="unknown")


def test_a_last_refusal_with_its_status_is_not_called_temporary() -> None:
    assert PAUSED in explain(100, None, 400)
    assert PAUSED in explain(100, None, None, retry_class=RetryClass.UNKNOWN)
    # An unreadable stored class falls back to the code and status.
    assert PAUSED in explain(100, None, 400, retry_class="not-a-class")


def test_a_dead_letter_is_explained_as_the_events_or_the_setups_fault() -> None:
    assert NO_ACTION not in _explain_group(100, None, "invalid")
    assert "fix the mapping" in _explain_group(100, None, "invalid")
    assert "configuration" in _explain_group(2200, None, "config")
    # A code with its own sentence keeps it.
    assert "LDU" in _explain_group(100, 2804030, "config")
