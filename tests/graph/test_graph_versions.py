"""The version table warns 90 days ahead of a sunset and knows what is dead."""

from __future__ import annotations

import warnings
from datetime import date

import pytest

from capirelay.graph import API_VERSIONS, DEFAULT_API_VERSION, version_status
from capirelay.graph.versions import warn_if_retiring

TODAY = date(2026, 11, 26)


@pytest.mark.parametrize(
    ("version", "today", "state", "until", "days_left"),
    [
        ("v26.0", TODAY, "ok", None, None),
        ("v25.0", TODAY, "ok", date(2028, 7, 29), 611),
        ("v22.0", TODAY, "ok", date(2027, 5, 20), 175),
        ("v21.0", TODAY, "near_sunset", date(2027, 1, 21), 56),
        ("v21.0", date(2026, 10, 23), "near_sunset", date(2027, 1, 21), 90),
        ("v21.0", date(2026, 10, 22), "ok", date(2027, 1, 21), 91),
        ("v21.0", date(2027, 1, 21), "near_sunset", date(2027, 1, 21), 0),
        ("v21.0", date(2027, 1, 22), "expired", date(2027, 1, 21), -1),
        ("v20.0", TODAY, "expired", date(2026, 9, 24), -63),
        ("v19.0", TODAY, "expired", date(2026, 5, 21), -189),
        ("v15.0", TODAY, "expired", date(2024, 11, 20), -736),
        ("v17.0", TODAY, "expired", None, None),
        ("v2.12", TODAY, "expired", None, None),
        ("v27.0", TODAY, "unknown", None, None),
        ("26.0", TODAY, "unknown", None, None),
        ("latest", TODAY, "unknown", None, None),
    ],
)
def test_version_status(
    version: str, today: date, state: str, until: date | None, days_left: int | None
) -> None:
    status = version_status(version, today)
    assert (status.version, status.state) == (version, state)
    assert status.available_until == until
    assert status.days_left == days_left
    assert version in status.advice


def test_advice_points_to_the_default_version() -> None:
    assert DEFAULT_API_VERSION in version_status("v15.0", TODAY).advice
    assert DEFAULT_API_VERSION in version_status("v21.0", TODAY).advice


def test_table_matches_the_changelog() -> None:
    assert API_VERSIONS["v26.0"].introduced == date(2026, 7, 29)
    assert API_VERSIONS["v26.0"].available_until is None
    assert API_VERSIONS["v23.0"].available_until == date(2027, 10, 8)
    assert API_VERSIONS["v24.0"].available_until == date(2028, 2, 18)


def test_warn_if_retiring_warns_only_when_it_matters() -> None:
    with pytest.warns(UserWarning, match="v21.0 stops working on 2027-01-21"):
        warn_if_retiring("v21.0", TODAY)
    with pytest.warns(UserWarning, match="v15.0 stopped working"):
        warn_if_retiring("v15.0", TODAY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_retiring("v26.0", TODAY).state == "ok"
