"""What Meta itself says, fetched for the dashboard and cached: EMQ, token and clock health.

The Dataset Quality API and ``/debug_token`` are Graph calls with rate limits
of their own, and a dashboard page may be reloaded every few seconds, so each
answer is cached per pixel for :data:`CACHE_SECONDS`.  A failure is cached too
(as its explanation), so a broken token does not turn every page view into a
slow failing request.  Tokens are read at call time and never leave this
module; results carry only the pixel id and Meta's (redacted) answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import httpx

from capirelay.config import Settings
from capirelay.graph import GraphClient, GraphError
from capirelay.graph._pixel import AdsPixelSettings
from capirelay.ops.health import GraphProbe, TokenHealth, probe_graph, token_health

__all__ = ["CACHE_SECONDS", "MetaEMQ", "MetaView", "PixelSettingsView"]

CACHE_SECONDS: Final = 300.0
HEALTH_CACHE_SECONDS: Final = 60.0
DATASET_QUALITY_TIMEOUT: Final = 5.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MetaEMQ:
    """Meta's Event Match Quality for one pixel: ``{event_name: entry}`` or why it is missing."""

    pixel_id: str
    by_event: dict[str, dict[str, Any]]
    error: str | None
    fetched_at: float


@dataclass(frozen=True, slots=True)
class PixelSettingsView:
    """One pixel's AAM and cookie settings at Meta, or why they could not be read."""

    pixel_id: str
    settings: AdsPixelSettings | None
    error: str | None
    warnings: list[str] = field(default_factory=list)


class _Cached(Generic[T]):
    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._value: T | None = None
        self._at = 0.0

    async def get(self, fetch: Callable[[], Awaitable[T]]) -> T:
        if self._value is None or self._clock() - self._at >= self._ttl:
            self._value = await fetch()
            self._at = self._clock()
        return self._value


class MetaView:
    """Cached answers from Graph for the Match quality and Health pages."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._clock = clock
        self._emq: dict[str, _Cached[MetaEMQ]] = {}
        self._tokens: _Cached[dict[str, TokenHealth]] = _Cached(HEALTH_CACHE_SECONDS, clock)
        self._probe: _Cached[GraphProbe] = _Cached(HEALTH_CACHE_SECONDS, clock)
        self._pixel_settings: _Cached[list[PixelSettingsView]] = _Cached(CACHE_SECONDS, clock)

    async def emq(self, pixel_id: str) -> MetaEMQ:
        cached = self._emq.setdefault(pixel_id, _Cached(CACHE_SECONDS, self._clock))
        return await cached.get(lambda: self._fetch_emq(pixel_id))

    async def tokens(self) -> dict[str, TokenHealth]:
        return await self._tokens.get(
            lambda: token_health(self._settings, transport=self._transport)
        )

    async def probe(self) -> GraphProbe:
        return await self._probe.get(lambda: probe_graph(self._settings, transport=self._transport))

    async def pixel_settings(self) -> list[PixelSettingsView]:
        """AAM and first-party cookie settings of every pixel with a token (Health page)."""
        return await self._pixel_settings.get(self._fetch_pixel_settings)

    async def _fetch_pixel_settings(self) -> list[PixelSettingsView]:
        from capirelay.ops.meta_advice import (
            AAM_OFF,
            COOKIES_DISABLED,
            advice_for,
            explain_settings_error,
        )

        out = []
        for pixel_id, pixel in self._settings.pixels.items():
            token = pixel.access_token.resolve() if pixel.access_token else None
            if token is None:
                continue
            app_secret = pixel.app_secret.resolve() if pixel.app_secret else None
            async with GraphClient(
                api_version=pixel.api_version,
                base_url=self._settings.graph_url,
                timeout=DATASET_QUALITY_TIMEOUT,
                app_secret=app_secret,
                transport=self._transport,
            ) as client:
                try:
                    found = await client.pixel_settings(pixel_id, access_token=token)
                except GraphError as err:
                    out.append(
                        PixelSettingsView(pixel_id, None, explain_settings_error(err, pixel_id))
                    )
                    continue
            warnings = []
            if not found.aam_on:
                warnings.append(advice_for(AAM_OFF))
            if found.cookies_disabled:
                warnings.append(advice_for(COOKIES_DISABLED))
            out.append(PixelSettingsView(pixel_id, found, None, warnings))
        return out

    async def _fetch_emq(self, pixel_id: str) -> MetaEMQ:
        pixel = self._settings.pixels.get(pixel_id)
        token = pixel.access_token.resolve() if pixel and pixel.access_token else None
        if pixel is None or token is None:
            return MetaEMQ(pixel_id, {}, "no access token configured for this pixel", self._clock())
        app_secret = pixel.app_secret.resolve() if pixel.app_secret else None
        async with GraphClient(
            api_version=pixel.api_version,
            base_url=self._settings.graph_url,
            timeout=DATASET_QUALITY_TIMEOUT,
            app_secret=app_secret,
            transport=self._transport,
        ) as client:
            try:
                answer = await client.dataset_quality(pixel_id, access_token=token)
            except GraphError as err:
                return MetaEMQ(pixel_id, {}, err.explanation, self._clock())
        entries = answer.get("web")
        by_event = {
            str(entry["event_name"]): entry
            for entry in (entries if isinstance(entries, list) else [])
            if isinstance(entry, dict) and entry.get("event_name")
        }
        return MetaEMQ(pixel_id, by_event, None, self._clock())
