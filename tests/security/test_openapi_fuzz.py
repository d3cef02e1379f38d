"""Schemathesis against the gateway's own OpenAPI document, on a live loopback gateway.

Every operation in ``/openapi.json`` is called with generated requests, valid and
invalid (bounded: ``MAX_EXAMPLES`` per operation, derandomized and without an example
database so runs are repeatable), once with the ingest key and once without.  The
gateway must never answer 5xx, and every answer must be one the document declares,
with the declared content type and body schema.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from capirelay.server.openapi import openapi_document
from reliability.harness import INGEST_KEY

# ``CAPIRELAY_FUZZ_EXAMPLES=1000`` for a long run; 40 keeps ``make test`` quick.
MAX_EXAMPLES = int(os.environ.get("CAPIRELAY_FUZZ_EXAMPLES", "40"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_get_declared_answers_and_never_a_5xx(
    case: schemathesis.Case, gateway: str
) -> None:
    headers: dict[str, Any] = dict(case.headers or {})
    headers.setdefault("Authorization", f"Bearer {INGEST_KEY}")
    case.call_and_validate(base_url=gateway, headers=headers, checks=CHECKS, timeout=10)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES // 4,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_without_a_key_never_5xx(case: schemathesis.Case, gateway: str) -> None:
    if case.headers:
        case.headers.pop("Authorization", None)
    case.call_and_validate(base_url=gateway, checks=[not_a_server_error], timeout=10)
