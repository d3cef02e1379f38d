"""Fixtures shared by the sources tests that run a real gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def storage_url(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The module's gateway storage: a module using it runs once per backend."""
    if backend == "postgres":
        with request.getfixturevalue("pg_schema")() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path_factory.mktemp('gateway') / 'capirelay.db'}"
