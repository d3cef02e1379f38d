"""``doctor``'s view of Meta's side: pixel settings (AAM, first-party cookies) and the
latest scheduled diagnostics, each with Meta's text and link beside capirelay's fix.

Kept apart from :mod:`capirelay.ops.doctor` so the core checks stay small; they are
all :class:`~capirelay.ops.doctor.Check` verdicts, so the CLI, ``--json`` and the
dashboard render them like every other check.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from capirelay.config import Settings
from capirelay.graph import GraphClient, GraphError
from capirelay.ops.doctor import Check, Status
from capirelay.ops.meta_advice import (
    AAM_OFF,
    COOKIES_DISABLED,
    HAD_PII,
    advice_for,
    explain_settings_error,
)
from capirelay.ops.meta_store import CheckState, RunRecord, meta_store_for
from capirelay.outbox import open_outbox, sqlite_path_from_url

__all__ = ["diagnostics_checks", "meta_doctor_checks", "pixel_settings_checks"]

GRAPH_TIMEOUT = 10.0


async def meta_doctor_checks(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    now: float | None = None,
) -> list[Check]:
    """Pixel settings fetched now, plus the stored results of the last scheduled run."""
    fetched, stored = await asyncio.gather(
        pixel_settings_checks(settings, transport=transport), _stored(settings.storage)
    )
    checks = list(fetched)
    if stored is not None:
        latest, runs = stored
        checks.extend(diagnostics_checks(latest, runs, now=time.time() if now is None else now))
    return checks


async def pixel_settings_checks(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[Check]:
    checks = []
    for pixel_id, pixel in settings.pixels.items():
        token = pixel.access_token.resolve() if pixel.access_token else None
        if token is None:
            continue
        app_secret = pixel.app_secret.resolve() if pixel.app_secret else None
        async with GraphClient(
            api_version=pixel.api_version,
            base_url=settings.graph_url,
            timeout=GRAPH_TIMEOUT,
            app_secret=app_secret,
            transport=transport,
        ) as client:
            try:
                found = await client.pixel_settings(pixel_id, access_token=token)
            except GraphError as err:
                checks.append(
                    Check(
                        f"pixel settings {pixel_id}",
                        Status.WARN,
                        "could not read the pixel's AAM and cookie settings",
                        explain_settings_error(err, pixel_id),
                    )
                )
                continue
        if found.aam_on:
            fields = ", ".join(found.automatic_matching_fields) or "Meta's default fields"
            checks.append(Check(f"aam {pixel_id}", Status.OK, f"on for {fields}"))
        else:
            checks.append(
                Check(
                    f"aam {pixel_id}",
                    Status.WARN,
                    "Automatic Advanced Matching is off",
                    advice_for("capirelay:aam_off"),
                )
            )
        cookie = found.first_party_cookie_status or "unknown"
        checks.append(
            Check(
                f"first-party cookies {pixel_id}",
                Status.WARN if found.cookies_disabled else Status.OK,
                cookie,
                advice_for("capirelay:first_party_cookies_disabled")
                if found.cookies_disabled
                else None,
            )
        )
    return checks


def diagnostics_checks(
    latest: list[CheckState], runs: dict[str, RunRecord], *, now: float
) -> list[Check]:
    """One verdict per failing stored check (had_pii fails, the rest warn), and per run."""
    checks = []
    for pixel_id, run in runs.items():
        age = max(0.0, now - run.ran_at) / 3600
        if run.error:
            checks.append(
                Check(
                    f"meta diagnostics {pixel_id}",
                    Status.WARN,
                    f"last run {age:.1f} h ago had errors",
                    run.error,
                )
            )
        else:
            failing = sum(1 for c in latest if c.pixel_id == pixel_id and c.failing)
            checks.append(
                Check(
                    f"meta diagnostics {pixel_id}",
                    Status.OK,
                    f"last run {age:.1f} h ago, {failing} failing",
                )
            )
    for state in latest:
        # AAM and cookie settings are read live by pixel_settings_checks; not twice.
        if not state.failing or state.key in (AAM_OFF, COOKIES_DISABLED):
            continue
        meta_text = f"{state.title}: {state.message}" if state.message else state.title
        if state.action_uri:
            meta_text += f" ({state.action_uri})"
        checks.append(
            Check(
                f"meta {state.pixel_id} {state.key}",
                Status.FAIL if state.key == HAD_PII else Status.WARN,
                f"Meta: {meta_text}",
                advice_for(state.key, state.title),
            )
        )
    return checks


async def _stored(url: str) -> tuple[list[CheckState], dict[str, RunRecord]] | None:
    try:
        if not Path(sqlite_path_from_url(url)).exists():
            return None
    except ValueError:
        pass  # not SQLite
    try:
        outbox = open_outbox(url)
        await outbox.open()
    except Exception:  # the storage check already reports why
        return None
    try:
        store = meta_store_for(outbox)
        return await store.latest_checks(), await store.runs()
    except Exception:
        return None
    finally:
        await outbox.close()
