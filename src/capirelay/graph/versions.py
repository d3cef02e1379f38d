"""Graph API versions the Conversions API can be called with, and how long each lives.

Meta retires a Graph API version on a published date; a gateway still pinned to a
retired version fails every request (error 2635) until someone bumps the pin.  This
module owns the sunset table (Graph API changelog, late 2026) and turns "which
version am I on?" into a status with a plain-language piece of advice, so the
client can warn 90 days ahead and the emulator can answer like Graph would.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

logger = logging.getLogger("capirelay.graph")

DEFAULT_API_VERSION = "v26.0"
SUNSET_WARNING_DAYS = 90

_VERSION_RE = re.compile(r"^v(\d{1,3})\.(\d{1,2})$", re.ASCII)

VersionState = Literal["ok", "near_sunset", "expired", "unknown"]


@dataclass(frozen=True, slots=True)
class ApiVersion:
    """One row of the changelog: ``available_until`` is None while Meta says "TBD"."""

    version: str
    introduced: date
    available_until: date | None


API_VERSIONS: dict[str, ApiVersion] = {
    row.version: row
    for row in (
        ApiVersion("v26.0", date(2026, 7, 29), None),
        ApiVersion("v25.0", date(2026, 2, 18), date(2028, 7, 29)),
        ApiVersion("v24.0", date(2025, 10, 8), date(2028, 2, 18)),
        ApiVersion("v23.0", date(2025, 5, 29), date(2027, 10, 8)),
        ApiVersion("v22.0", date(2025, 1, 21), date(2027, 5, 20)),
        ApiVersion("v21.0", date(2024, 10, 2), date(2027, 1, 21)),
        ApiVersion("v20.0", date(2024, 5, 21), date(2026, 9, 24)),
        ApiVersion("v19.0", date(2024, 1, 23), date(2026, 5, 21)),
        ApiVersion("v15.0", date(2022, 9, 15), date(2024, 11, 20)),
    )
}

# Every well-formed version older than the newest one in the table that is not
# itself listed (v16-v18, v14 and below) was retired before the table's oldest
# still-listed expiry, so they are known to be dead.
_LATEST_KNOWN_MAJOR = max(int(v[1:].split(".")[0]) for v in API_VERSIONS)


@dataclass(frozen=True, slots=True)
class VersionStatus:
    version: str
    state: VersionState
    available_until: date | None
    days_left: int | None
    advice: str


def is_well_formed(version: str) -> bool:
    """``v26.0``-style, as Graph routes it (the SDK checks the same shape)."""
    return _VERSION_RE.match(version) is not None


def version_status(version: str, today: date | None = None) -> VersionStatus:
    """Where ``version`` stands on ``today`` (default: the current UTC date)."""
    today = today or datetime.now(UTC).date()
    row = API_VERSIONS.get(version)
    if row is None:
        return _status_of_unlisted(version)
    if row.available_until is None:
        return VersionStatus(version, "ok", None, None, f"{version} has no announced end date.")
    days_left = (row.available_until - today).days
    until = row.available_until.isoformat()
    if days_left < 0:
        return VersionStatus(
            version,
            "expired",
            row.available_until,
            days_left,
            f"{version} stopped working on {until}; every call fails with error 2635. "
            f"Set api_version to {DEFAULT_API_VERSION}.",
        )
    if days_left <= SUNSET_WARNING_DAYS:
        return VersionStatus(
            version,
            "near_sunset",
            row.available_until,
            days_left,
            f"{version} stops working on {until} ({days_left} days left). "
            f"Move api_version to {DEFAULT_API_VERSION} before then.",
        )
    return VersionStatus(
        version, "ok", row.available_until, days_left, f"{version} is supported until {until}."
    )


def beyond_the_table(version: str) -> bool:
    """A well-formed version this table does not list and cannot call retired: not older
    than its newest, so most likely a version Meta released since (nothing to move back
    from)."""
    match = _VERSION_RE.match(version)
    return (
        match is not None
        and version not in API_VERSIONS
        and int(match.group(1)) >= _LATEST_KNOWN_MAJOR
    )


def _status_of_unlisted(version: str) -> VersionStatus:
    match = _VERSION_RE.match(version)
    if match is not None and int(match.group(1)) < _LATEST_KNOWN_MAJOR:
        return VersionStatus(
            version,
            "expired",
            None,
            None,
            f"{version} is long retired; every call fails with error 2635. "
            f"Set api_version to {DEFAULT_API_VERSION}.",
        )
    return VersionStatus(
        version,
        "unknown",
        None,
        None,
        f"{version} is not a Graph API version capirelay knows; "
        f"use one like {DEFAULT_API_VERSION}.",
    )


class ApiVersionWarning(UserWarning):
    """The Graph API version in use is retired or near its end (a ``UserWarning`` for
    library users; capirelay's own commands log it instead, see ``capirelay.logs``)."""


def warn_if_retiring(version: str, today: date | None = None) -> VersionStatus:
    """Emit an :class:`ApiVersionWarning` and a log line when ``version`` is expired or
    near its end."""
    status = version_status(version, today)
    if status.state in ("near_sunset", "expired"):
        warnings.warn(status.advice, ApiVersionWarning, stacklevel=3)
        logger.warning("graph api version %s: %s", status.state, status.advice)
    return status
