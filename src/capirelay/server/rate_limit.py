"""Token-bucket rate limits for the public routes and quotas for ingest keys.

``POST /v1/collect`` is unauthenticated by design and ``POST /v1/webhooks/*``
is reachable by anyone until its signature is checked, so both are limited
per client address and per target (pixel, webhook) before any work that
costs: nothing is stored for a refused request, it is answered ``429`` with
``Retry-After`` and counted as ``capirelay_events_dropped_total{reason=
"rate_limited"}``.  ``POST /v1/events`` gets a per-ingest-key quota in
events (a request of N events takes N tokens), so one misbehaving backend
cannot starve the others.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a
request takes ``cost`` tokens.  A request costing more than ``burst`` (a big
batch under a small quota) is admitted only when the bucket is full and
leaves it in debt, so the long-run rate still holds and no batch size is
refused forever.

Memory is bounded whatever the number of addresses: each limit keeps at most
``max_entries`` buckets in least-recently-used order and forgets the oldest.
A forgotten address starts again with a full bucket, which is what an idle
address would have anyway; an attacker cycling through more addresses than
that is a distributed flood, and the per-pixel / per-webhook bucket bounds it.
IPv6 clients are keyed by their /64 (one subscriber's allocation), IPv4 by
the address.

Buckets live in the process: with N replicas behind a load balancer each one
enforces its own limits (N times the configured rate in total), while what
is shared through storage (the 48 h dedup, the queue) stays shared.  The
event loop runs these checks without awaiting, so no lock is needed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from capirelay import browser_ids
from capirelay.config import RateLimit, RateLimitSettings
from capirelay.server.http import ApiError

__all__ = [
    "BucketStore",
    "GatewayLimits",
    "address_key",
    "rate_limited",
]

Clock = Callable[[], float]
# The key lives with the address rules, so the dashboard's login throttle shares it.
address_key = browser_ids.address_key


class BucketStore:
    """Token buckets of one limit, keyed by a string, at most ``max_entries`` of them."""

    __slots__ = ("_buckets", "_clock", "burst", "max_entries", "rate")

    def __init__(self, limit: RateLimit, *, max_entries: int, clock: Clock = time.monotonic):
        self.rate = float(limit.rate)
        self.burst = float(limit.burst)
        self.max_entries = max_entries
        self._clock = clock
        # key -> [tokens, monotonic time of the last refill]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens for ``key``: 0.0 when admitted, else seconds until it would be."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        needed = min(cost, self.burst)
        if bucket[0] >= needed:
            bucket[0] -= cost
            return 0.0
        return (needed - bucket[0]) / self.rate


def rate_limited(retry_after: float, what: str, setting: str) -> ApiError:
    """The 429 for a refused request; ``what`` says which limit, ``setting`` where it is."""
    seconds = max(1, math.ceil(retry_after))
    return ApiError(
        429,
        "rate_limited",
        f"too many requests {what}; retry after {seconds} s "
        f"(the limit is {setting} in the gateway config)",
        headers={"Retry-After": str(seconds)},
    )


@dataclass(slots=True)
class GatewayLimits:
    """Every bucket store of one gateway process (``app.state.limits``)."""

    collect_address: BucketStore
    collect_pixel: BucketStore
    webhook_address: BucketStore
    webhook_name: BucketStore
    ingest_key_limits: dict[str, BucketStore]

    @classmethod
    def from_settings(
        cls,
        limits: RateLimitSettings,
        ingest_quotas: Mapping[str, RateLimit],
        *,
        clock: Clock = time.monotonic,
    ) -> GatewayLimits:
        n = limits.max_tracked_addresses
        return cls(
            collect_address=BucketStore(limits.collect_per_address, max_entries=n, clock=clock),
            collect_pixel=BucketStore(limits.collect_per_pixel, max_entries=n, clock=clock),
            webhook_address=BucketStore(limits.webhook_per_address, max_entries=n, clock=clock),
            webhook_name=BucketStore(limits.webhook_per_name, max_entries=n, clock=clock),
            ingest_key_limits={
                name: BucketStore(quota, max_entries=1, clock=clock)
                for name, quota in ingest_quotas.items()
            },
        )

    def check_collect(self, address: str, pixel_id: str) -> None:
        wait = self.collect_address.take(address)
        if wait:
            raise rate_limited(wait, "from this address", "rate_limits.collect_per_address")
        wait = self.collect_pixel.take(pixel_id)
        if wait:
            raise rate_limited(wait, f"for pixel {pixel_id}", "rate_limits.collect_per_pixel")

    def check_webhook_address(self, address: str) -> None:
        """Before the signature: the sender's address (the HMAC costs CPU)."""
        wait = self.webhook_address.take(address)
        if wait:
            raise rate_limited(wait, "from this address", "rate_limits.webhook_per_address")

    def check_webhook_name(self, name: str) -> None:
        """After the signature: forged requests must not spend the real vendor's quota."""
        wait = self.webhook_name.take(name)
        if wait:
            raise rate_limited(wait, f"to webhook {name}", "rate_limits.webhook_per_name")

    def check_ingest_key(self, key_name: str, events: int) -> None:
        store = self.ingest_key_limits.get(key_name)
        if store is None:
            return
        wait = store.take(key_name, events)
        if wait:
            raise rate_limited(
                wait,
                f"for ingest key '{key_name}' ({events} events)",
                f"ingest_keys.{key_name}.events_per_second / burst",
            )
