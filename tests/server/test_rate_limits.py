"""Rate limits on the public routes and quotas on ingest keys, on a live gateway per backend.

The buckets refill at 0.001 token/s, so within a test run a bucket is what its
burst says; the refill itself is tested with an injected clock in the unit
tests at the top.  Addresses come through ``X-Forwarded-For``: the test
gateway trusts 127.0.0.1 as its proxy, as a gateway behind a load balancer
trusts the balancer.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from capirelay.config import (
    DashboardSettings,
    IngestKey,
    RateLimit,
    RateLimitSettings,
    Secret,
    Settings,
    WebhookSettings,
)
from capirelay.emulator.testing import RunningEmulator
from capirelay.server import create_app
from capirelay.server.rate_limit import BucketStore, address_key
from sources.webhook_data import fixture_bytes, shopify_headers

from .conftest import (
    INGEST_KEY,
    OTHER_PIXEL_ID,
    PIXEL_ID,
    gateway_settings,
    serve_in_thread,
)

ADDRESS_BURST = 5
PIXEL_BURST = 8
WEBHOOK_BURST = 3
KEY_BURST = 10
ADMIN_TOKEN = "dashboard-token-for-rate-limit-tests"
WEBHOOK_SECRET = "webhook-secret-for-rate-limit-tests"
BROWSER = {"User-Agent": "Mozilla/5.0 (Macintosh) Safari/605.1.15"}
SLOW = 0.001  # tokens per second: no refill within a test


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------
# The bucket and the address key


def test_a_bucket_admits_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    store = BucketStore(RateLimit(rate=2, burst=3), max_entries=10, clock=clock)

    assert [store.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert store.take("a") == pytest.approx(0.5)  # one token comes back in 1/rate s
    assert store.take("b") == 0.0, "another key has its own bucket"
    clock.now += 0.5
    assert store.take("a") == 0.0
    assert store.take("a") == pytest.approx(0.5)
    clock.now += 60
    assert [store.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0], "refills to burst only"


def test_a_request_costing_more_than_the_burst_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    clock = FakeClock()
    store = BucketStore(RateLimit(rate=10, burst=100), max_entries=10, clock=clock)

    assert store.take("key", 250) == 0.0  # full bucket: admitted, 150 tokens owed
    assert store.take("key", 1) == pytest.approx(15.1)  # the debt is paid at the rate
    clock.now += 15.1
    assert store.take("key", 1) == 0.0


def test_memory_is_bounded_whatever_the_number_of_addresses() -> None:
    clock = FakeClock()
    store = BucketStore(RateLimit(rate=1, burst=2), max_entries=100, clock=clock)
    store.take("busy")
    store.take("busy")
    for i in range(10_000):
        store.take(f"10.0.{i // 256}.{i % 256}")
        if i % 50 == 0:
            store.take("busy")  # recently used: kept, still empty

    assert len(store) == 100
    assert store.take("busy") > 0, "the active flooder's bucket was not forgotten"


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: header ignored
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),  # trusted proxy: the client behind it
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # left of it: client-written
        ("127.0.0.1", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", None, "198.51.100.7"),
        (None, None, "unknown"),
    ],
)
def test_the_address_key_follows_the_trusted_proxy_rules(
    remote: str | None, forwarded: str | None, expected: str
) -> None:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    assert address_key(remote, headers, ["127.0.0.1"]) == expected


def test_defaults_fit_a_shop_and_are_documented_in_the_example_config() -> None:
    limits = RateLimitSettings()
    assert limits.collect_per_address.burst >= 50, "a shopper's page views fit in the burst"
    assert limits.collect_per_pixel.rate >= 100
    example = tomllib.loads(
        (Path(__file__).parents[2] / "examples" / "capirelay.toml").read_text(encoding="utf-8")
    )
    assert RateLimitSettings(**example["rate_limits"]) == limits, "the example shows the defaults"


# ---------------------------------------------------------------------------
# On a live gateway


@pytest.fixture(scope="module")
def limited_settings(
    db_path: Path,
    storage_url: str,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Settings:
    secrets_in_env.chdir(db_path.parent)
    base = gateway_settings(storage_url, emulator.url)
    return gateway_settings(
        storage_url,
        emulator.url,
        rate_limits=RateLimitSettings(
            collect_per_address=RateLimit(rate=SLOW, burst=ADDRESS_BURST),
            collect_per_pixel=RateLimit(rate=SLOW, burst=PIXEL_BURST),
            webhook_per_address=RateLimit(rate=SLOW, burst=WEBHOOK_BURST),
            webhook_per_name=RateLimit(rate=SLOW, burst=1000),
        ),
        ingest_keys={
            **base.ingest_keys,
            "quota": IngestKey(
                key=Secret(value="quota-key-0123456789"),
                events_per_second=SLOW,
                burst=KEY_BURST,
            ),
        },
        webhooks={
            "orders": WebhookSettings(
                preset="shopify", pixel_id=PIXEL_ID, secret=Secret(value=WEBHOOK_SECRET)
            )
        },
        dashboard=DashboardSettings(admin_token=Secret(value=ADMIN_TOKEN)),
    )


@pytest.fixture(scope="module")
def limited_url(limited_settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(limited_settings)) as url:
        yield url


def beacon(pixel_id: str, event_id: str) -> dict[str, object]:
    return {
        "pixel_id": pixel_id,
        "event_name": "PageView",
        "event_id": event_id,
        "page_url": "https://shop.example/p",
    }


def metric(exposition: str, family: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in exposition.splitlines():
        if line.startswith(family + "{"):
            name_labels, _, value = line.rpartition(" ")
            found = ",".join(sorted(re.findall(r'\w+="[^"]*"', name_labels)))
            if found == wanted:
                return float(value)
    return 0.0


def test_a_flood_from_one_address_gets_429s_while_another_address_gets_202s(
    limited_url: str, uid: str
) -> None:
    flooder = {"X-Forwarded-For": "203.0.113.66", **BROWSER}
    shopper = {"X-Forwarded-For": "198.51.100.20", **BROWSER}
    with httpx.Client(base_url=limited_url, timeout=10) as http:
        before = http.get("/metrics").text
        flood = [
            http.post("/v1/collect", json=beacon(PIXEL_ID, f"{uid}f{i}"), headers=flooder)
            for i in range(40)
        ]
        honest = http.post("/v1/collect", json=beacon(PIXEL_ID, f"{uid}honest"), headers=shopper)
        after = http.get("/metrics").text
        # A refused beacon left nothing behind: not even its id in the dedup store.
        retried = http.post("/v1/collect", json=beacon(PIXEL_ID, f"{uid}f39"), headers=shopper)

    statuses = [r.status_code for r in flood]
    assert statuses == [202] * ADDRESS_BURST + [429] * (40 - ADDRESS_BURST)
    refused = flood[-1]
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert "from this address" in error["message"]
    assert "rate_limits.collect_per_address" in error["message"]
    assert honest.status_code == 202 and honest.json()["status"] == "queued"
    assert retried.status_code == 202 and retried.json()["status"] == "queued"

    def grew(family: str, **labels: str) -> float:
        return metric(after, family, **labels) - metric(before, family, **labels)

    assert grew("capirelay_events_dropped_total", pixel=PIXEL_ID, reason="rate_limited") == 35
    accepted = grew(
        "capirelay_events_accepted_total", pixel=PIXEL_ID, event_name="PageView", source="collect"
    )
    assert accepted == ADDRESS_BURST + 1


def test_many_addresses_together_are_held_to_the_pixel_limit(limited_url: str, uid: str) -> None:
    with httpx.Client(base_url=limited_url, timeout=10) as http:
        answers = [
            http.post(
                "/v1/collect",
                json=beacon(OTHER_PIXEL_ID, f"{uid}{i}"),
                headers={"X-Forwarded-For": f"192.0.2.{i + 1}", **BROWSER},
            )
            for i in range(PIXEL_BURST + 3)
        ]

    assert [a.status_code for a in answers] == [202] * PIXEL_BURST + [429] * 3
    assert "rate_limits.collect_per_pixel" in answers[-1].json()["error"]["message"]
    assert "retry-after" in answers[-1].headers


def test_webhook_floods_are_refused_before_the_signature_is_checked(
    limited_url: str,
) -> None:
    forged = {"X-Shopify-Hmac-Sha256": "bm90IGEgc2lnbmF0dXJl", "X-Shopify-Topic": "orders/paid"}
    headers = {**forged, "X-Forwarded-For": "203.0.113.99"}
    with httpx.Client(base_url=limited_url, timeout=10) as http:
        answers = [
            http.post("/v1/webhooks/orders", content=b'{"id": 1}', headers=headers)
            for _ in range(WEBHOOK_BURST + 4)
        ]
        exposition = http.get("/metrics").text
        other = http.post(
            "/v1/webhooks/orders",
            content=b'{"id": 1}',
            headers={**forged, "X-Forwarded-For": "198.51.100.99"},
        )

    assert [a.status_code for a in answers] == [401] * WEBHOOK_BURST + [429] * 4
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    labels = {"webhook": "orders"}
    assert metric(exposition, "capirelay_webhooks_total", outcome="unauthorized", **labels) == 3
    assert metric(exposition, "capirelay_webhooks_total", outcome="rate_limited", **labels) == 4
    assert other.status_code == 401, "another address is still heard"


NAME_BURST = 2


@pytest.fixture(scope="module")
def vendor_url(limited_settings: Settings) -> Iterator[str]:
    """A gateway whose webhook bucket is small and whose address buckets are not."""
    settings = limited_settings.model_copy(
        update={
            "rate_limits": RateLimitSettings(
                webhook_per_address=RateLimit(rate=SLOW, burst=1000),
                webhook_per_name=RateLimit(rate=SLOW, burst=NAME_BURST),
            )
        }
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


def test_forged_webhooks_do_not_spend_the_vendors_quota(vendor_url: str) -> None:
    body = fixture_bytes("shopify", "orders_paid.json")
    forged = {"X-Shopify-Hmac-Sha256": "bm90IGEgc2lnbmF0dXJl", "X-Shopify-Topic": "orders/paid"}
    signed = shopify_headers(body, WEBHOOK_SECRET, time.time())
    with httpx.Client(base_url=vendor_url, timeout=10) as http:
        attack = [
            http.post(
                "/v1/webhooks/orders",
                content=body,
                headers={**forged, "X-Forwarded-For": f"203.0.113.{i}"},
            )
            for i in range(40)
        ]
        genuine = [
            http.post(
                "/v1/webhooks/orders",
                content=body,
                headers={**signed, "X-Forwarded-For": "198.51.100.7"},
            )
            for _ in range(NAME_BURST + 1)
        ]

    assert [a.status_code for a in attack] == [401] * 40
    # Only signed requests take from the webhook's bucket: the vendor's orders get through
    # until they themselves are over it.
    assert [g.status_code for g in genuine[:NAME_BURST]] == [200] * NAME_BURST
    assert genuine[-1].status_code == 429
    assert "rate_limits.webhook_per_name" in genuine[-1].json()["error"]["message"]


def test_an_ingest_key_over_its_quota_gets_429_while_other_keys_go_on(
    limited_url: str, uid: str
) -> None:
    now = int(time.time())

    def events(prefix: str, n: int) -> dict[str, object]:
        return {
            "pixel_id": PIXEL_ID,
            "data": [
                {
                    "event_name": "Lead",
                    "event_time": now,
                    "event_id": f"{prefix}{i}",
                    "action_source": "system_generated",
                    "user_data": {"external_id": f"{prefix}{i}"},
                }
                for i in range(n)
            ],
        }

    quota = {"Authorization": "Bearer quota-key-0123456789"}
    other = {"Authorization": f"Bearer {INGEST_KEY}"}
    with httpx.Client(base_url=limited_url, timeout=10) as http:
        first = http.post("/v1/events", json=events(f"{uid}a", 6), headers=quota)
        second = http.post("/v1/events", json=events(f"{uid}b", 6), headers=quota)
        small = http.post("/v1/events", json=events(f"{uid}c", 4), headers=quota)
        neighbour = http.post("/v1/events", json=events(f"{uid}d", 50), headers=other)

    assert first.status_code == 202
    assert second.status_code == 429, "6 + 6 events are over the burst of 10"
    assert "ingest_keys.quota.events_per_second" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1
    assert small.status_code == 202, "the refused request took nothing from the bucket"
    assert neighbour.status_code == 202, "another key is not starved"
    assert [r["status"] for r in neighbour.json()["results"]] == ["queued"] * 50


def test_the_dashboard_shows_rate_limited_drops(limited_url: str) -> None:
    with httpx.Client(base_url=limited_url, timeout=10) as http:
        for i in range(ADDRESS_BURST + 1):
            http.post(
                "/v1/collect",
                json=beacon(PIXEL_ID, f"dash-{i}"),
                headers={"X-Forwarded-For": "203.0.113.200", **BROWSER},
            )
        page = http.get("/ui/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert page.status_code == 200
    assert re.search(r"Dropped</strong>:[^<]*rate_limited \d+", page.text)
