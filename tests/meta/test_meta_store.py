"""The diagnostics store on both backends: transitions, history, runs, delivered hours, lease."""

from __future__ import annotations

from capirelay.ops.meta_store import CheckResult, DeliveredHour, meta_store_for
from capirelay.outbox import Outbox

PIXEL = "1234567890"


def _check(key: str, failing: bool) -> CheckResult:
    result = "failed" if failing else "passed"
    return CheckResult(key, "da_checks", failing, result, f"title {key}", f"msg {key}", "https://x")


async def test_transitions_and_history(outbox: Outbox) -> None:
    store = meta_store_for(outbox)
    first = await store.save_checks(PIXEL, [_check("a", False), _check("b", True)], now=100.0)
    assert [(c.key, c.failing) for c in first] == [("b", True)]
    assert await store.save_checks(PIXEL, [_check("a", False), _check("b", True)], now=200.0) == []
    later = await store.save_checks(PIXEL, [_check("a", True)], now=300.0)
    assert sorted((c.key, c.failing) for c in later) == [("a", True), ("b", False)]
    latest = await store.latest_checks(PIXEL)
    assert [(c.key, c.failing, c.changed_at, c.checked_at) for c in latest] == [
        ("a", True, 300.0, 300.0)
    ]
    history = await store.check_history(PIXEL)
    # newest first; within one run, the later-recorded transition first
    assert [(c.key, c.failing, c.at) for c in history] == [
        ("b", False, 300.0),
        ("a", True, 300.0),
        ("b", True, 100.0),
    ]


async def test_runs_and_delivered_hours_add_up(outbox: Outbox) -> None:
    store = meta_store_for(outbox)
    await store.save_run(PIXEL, ran_at=10.0, error=None, summary={"x": [1, 2]})
    await store.save_run(PIXEL, ran_at=20.0, error="boom", summary={})
    runs = await store.runs()
    assert runs[PIXEL].ran_at == 20.0 and runs[PIXEL].error == "boom"
    rows = [DeliveredHour(PIXEL, "Purchase", 3600, 5, 5), DeliveredHour(PIXEL, "Lead", 3600, 2, 1)]
    await store.add_delivered(rows)
    await store.add_delivered([DeliveredHour(PIXEL, "Purchase", 3600, 3, 3)])
    await store.add_delivered([DeliveredHour(PIXEL, "Purchase", 7200, 1, 1)])
    got = await store.delivered(PIXEL, 0, 7200)
    assert [(d.event_name, d.hour, d.sent, d.acknowledged) for d in got] == [
        ("Lead", 3600, 2, 1),
        ("Purchase", 3600, 8, 8),
    ]
    await store.forget_delivered(7200)
    assert [d.hour for d in await store.delivered(PIXEL, 0, 10_000)] == [7200]


async def test_lease_is_held_by_one_holder_until_it_expires(outbox: Outbox) -> None:
    store = meta_store_for(outbox)
    assert await store.acquire_lease("diag", "replica-a", now=0.0, ttl=60.0)
    assert not await store.acquire_lease("diag", "replica-b", now=30.0, ttl=60.0)
    assert await store.acquire_lease("diag", "replica-a", now=50.0, ttl=60.0)  # renew
    assert not await store.acquire_lease("diag", "replica-b", now=100.0, ttl=60.0)
    assert await store.acquire_lease("diag", "replica-b", now=111.0, ttl=60.0)  # a's ran out
    await store.release_lease("diag", "replica-a")  # not a's any more: no effect
    assert not await store.acquire_lease("diag", "replica-a", now=112.0, ttl=60.0)
    await store.release_lease("diag", "replica-b")
    assert await store.acquire_lease("diag", "replica-a", now=113.0, ttl=60.0)
