"""The OpenAPI 3.1 description of the gateway's public endpoints.

Written by hand where the routes check shapes themselves (the envelope of
``/v1/events`` and the beacon body), generated from the pydantic models for
the event itself (``components.schemas.Event`` and everything it references).
Event items are declared as plain objects in the request schemas on purpose:
an event that does not match :class:`~capirelay.events.Event` is *not* a 4xx,
it is answered ``rejected`` in its own result row so it never costs the
others.  The document must match the routes exactly (it is fuzzed with
schemathesis), so every status a route can answer is listed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from capirelay import __version__
from capirelay.events import Event
from capirelay.server.openapi_trace import EVENT_TRACE, trace_operation

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


_PROBLEM = {
    "type": "object",
    "required": ["code", "field", "severity", "message"],
    "properties": {
        "code": {"type": "string", "description": "stable machine-readable problem code"},
        "field": {"type": "string", "description": "dotted path into the event"},
        "severity": {"type": "string", "enum": ["error", "warning"]},
        "message": {"type": "string", "description": "what is wrong and the fix"},
        "count": {
            "type": "integer",
            "minimum": 2,
            "description": "how many values of the field this problem covers, when more than "
            "one: values of one field dropped for one reason are told once, with their count "
            "(also in the message); absent, the problem is about one value or none",
        },
    },
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_EVENTS_REQUEST = {
    "type": "object",
    "required": ["pixel_id", "data"],
    "additionalProperties": False,
    "properties": {
        "pixel_id": {"type": "string", "minLength": 1, "description": "a configured pixel id"},
        "data": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1000,
            "description": "Server events in Conversions API shape (see the Event schema); "
            "identifiers raw or already SHA-256 hashed.  An event that does not match is "
            "answered 'rejected' in its result, the others are still queued.",
            "items": {"type": "object"},
        },
        "test_event_code": {
            "type": ["string", "null"],
            "description": "route these events to Events Manager's Test Events tool",
        },
    },
}

_EVENT_RESULT = {
    "type": "object",
    "required": ["index", "event_id", "status", "problems"],
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "event_id": {"type": "string", "description": "given, or derived from the content"},
        "status": {"type": "string", "enum": ["queued", "duplicate", "rejected"]},
        "problems": {"type": "array", "items": _ref("Problem")},
    },
}

_EVENTS_RESPONSE = {
    "type": "object",
    "required": ["results", "test_event_code"],
    "properties": {
        "results": {"type": "array", "items": _ref("EventResult")},
        "test_event_code": {"type": ["string", "null"]},
    },
}

_COLLECT_REQUEST = {
    "type": "object",
    "required": ["pixel_id", "event_name"],
    "additionalProperties": False,
    "properties": {
        "pixel_id": {"type": "string", "minLength": 1},
        "event_name": {"type": "string", "minLength": 1},
        "event_id": {
            "type": ["string", "null"],
            "description": "pass the id you give fbq's eventID; a UUID4 is minted when absent",
        },
        "event_time": {"type": ["integer", "null"], "description": "unix seconds; default now"},
        "custom_data": {
            "type": ["object", "null"],
            "description": "see the CustomData schema; a mismatch rejects the event",
        },
        "user_data": {
            "type": ["object", "null"],
            "description": "identifiers the shopper typed (see UserData); hashed at ingest. "
            "IP, user agent, fbp and fbc come from the request itself",
        },
        "page_url": {"type": ["string", "null"], "description": "location.href"},
        "referrer_url": {"type": ["string", "null"], "description": "document.referrer"},
        "token": {
            "type": ["string", "null"],
            "description": "a server-signed token vouching for this event (value, currency, "
            "event_id); see capirelay.beacon_tokens",
        },
        "fbclid": {
            "type": ["string", "null"],
            "description": "click id kept since the landing page; builds fbc when the "
            "page URL and cookies carry none (or an older click)",
        },
        "consent": {
            "description": "false (or a denied Consent Mode signal) drops the event; with the "
            "pixel's require_consent, an absent flag drops it too",
            "oneOf": [
                {"type": "boolean"},
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "ad_storage": {"type": "string", "enum": ["granted", "denied"]},
                        "ad_user_data": {"type": "string", "enum": ["granted", "denied"]},
                    },
                },
            ],
        },
    },
}

_COLLECT_RESPONSE = {
    "type": "object",
    "required": ["event_id", "status", "fbp", "problems"],
    "properties": {
        "event_id": {"type": "string", "description": "use as fbq(..., {eventID})"},
        "status": {"type": "string", "enum": ["queued", "duplicate", "rejected", "dropped"]},
        "fbp": {"type": ["string", "null"]},
        "problems": {"type": "array", "items": _ref("Problem")},
        "reason": {"type": "string", "enum": ["no_consent", "bot"]},
    },
}

_READINESS = {
    "type": "object",
    "required": ["status", "reasons"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
}

_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"schema": {"type": "string"}}}
_CORS_ORIGIN = {"Access-Control-Allow-Origin": {"schema": {"type": "string"}}}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _json_response(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _events_operation() -> dict[str, Any]:
    return {
        "summary": "Queue server events for the Conversions API",
        "operationId": "postEvents",
        "security": [{"ingestKey": []}],
        "parameters": [
            {
                "name": "X-Test-Event-Code",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "overrides the body's and the pixel's test_event_code",
            }
        ],
        "requestBody": _json_body(_ref("EventsRequest")),
        "responses": {
            "202": _json_response(
                "committed durably; one result per event", _ref("EventsResponse")
            ),
            "400": _error_response("malformed JSON or Content-Length"),
            "401": _error_response("missing or invalid ingest key", _WWW_AUTHENTICATE),
            "403": _error_response("the key may not send to this pixel"),
            "404": _error_response("unknown pixel"),
            "413": _error_response("body over max_body_bytes, or more than 1,000 events"),
            "422": _error_response("wrong top-level shape"),
            "429": _error_response("over the ingest key's quota; nothing accepted", _RETRY_AFTER),
            "503": _error_response("storage unavailable; nothing accepted", _RETRY_AFTER),
        },
    }


def _collect_operation() -> dict[str, Any]:
    return {
        "summary": "Browser beacon (sendBeacon / fetch keepalive)",
        "operationId": "postCollect",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("CollectRequest")},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "202": _json_response(
                "committed (or deliberately dropped); sets _fbp/_fbc cookies",
                _ref("CollectResponse"),
                headers={"Set-Cookie": {"schema": {"type": "string"}}, **_CORS_ORIGIN},
            ),
            "400": _error_response("malformed JSON"),
            "403": _error_response(
                "origin not in the pixel's allowed_origins, or a purchase token refused "
                "(token_expired, token_mismatch, verification_required...)"
            ),
            "404": _error_response("unknown pixel"),
            "413": _error_response("body over max_collect_body_bytes"),
            "422": _error_response("wrong shape, or event_name not in the pixel's beacon_events"),
            "429": _error_response("over the per-address or per-pixel rate limit", _RETRY_AFTER),
            "503": _error_response("storage unavailable; nothing accepted", _RETRY_AFTER),
        },
    }


_WEBHOOK_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["webhook", "status"],
    "properties": {
        "webhook": {"type": "string"},
        "topic": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["processed", "ignored", "ping"]},
        "reason": {
            "type": "string",
            "enum": ["no_rule_for_topic", "condition_false", "test_mode"],
            "description": "ignored only: no rule of the mapping is for the topic; the "
            "rules for it have a when condition that is false for this payload; or the "
            "vendor marks the payload a test (Shopify test: true, Stripe livemode: false) "
            "and no test_event_code is configured",
        },
        "message": {"type": "string", "description": "ignored only: why, in a sentence"},
        "rules": {
            "type": "array",
            "description": "ignored only: the rules whose condition did not hold (for "
            "test_mode: the rules that would have sent an event, when null)",
            "items": {
                "type": "object",
                "properties": {
                    "rule": {"type": "string"},
                    "when": {"type": ["string", "null"]},
                    "event_id": {"type": ["string", "null"]},
                },
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "rule": {"type": "string"},
                    "event_name": {"type": ["string", "null"]},
                    "event_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["queued", "duplicate", "rejected"]},
                    "problems": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Problem"},
                    },
                },
            },
        },
    },
}


def _webhook_operation() -> dict[str, Any]:
    return {
        "summary": "Signed webhook (Shopify, WooCommerce, Stripe, or a mapping file)",
        "description": (
            "The signature is checked on the raw body before anything is parsed; the payload "
            "is mapped to CAPI events by the webhook's preset or mapping file. Events rejected "
            "by validation are answered 200 with their problems (the vendor must not retry "
            "them); storage failures are 503 so the vendor retries."
        ),
        "operationId": "postWebhook",
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "responses": {
            "200": _json_response("processed, ignored topic, or ping", _WEBHOOK_RESPONSE),
            "400": _error_response("signed but malformed JSON"),
            "401": _error_response("missing or invalid signature; nothing queued"),
            "404": _error_response("no webhook of that name"),
            "413": _error_response("body over max_body_bytes"),
            "429": _error_response("over the per-address or per-webhook rate limit", _RETRY_AFTER),
            "503": _error_response("signing secret or storage unavailable", _RETRY_AFTER),
        },
    }


def _snippet_operation() -> dict[str, Any]:
    return {
        "summary": "The browser snippet (capirelay.track with the pixel eventID handshake)",
        "operationId": "getSnippet",
        "responses": {
            "200": {
                "description": "JavaScript",
                "content": {"application/javascript": {"schema": {"type": "string"}}},
            },
            "304": {"description": "not modified (ETag)"},
        },
    }


def _preflight_operation() -> dict[str, Any]:
    return {
        "summary": "CORS preflight for the beacon",
        "operationId": "preflightCollect",
        "responses": {
            "204": {"description": "origin allowed", "headers": _CORS_ORIGIN},
            "403": _error_response("origin not allowed for any pixel"),
        },
    }


def _health_paths() -> dict[str, Any]:
    status_ok = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    return {
        "/healthz": {
            "get": {
                "summary": "The process answers",
                "operationId": "healthz",
                "responses": {"200": _json_response("alive", status_ok)},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Storage answers and delivery runs",
                "operationId": "readyz",
                "responses": {
                    "200": _json_response("ready", _ref("Readiness")),
                    "503": _json_response("not ready, with reasons", _ref("Readiness")),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": _error_response("still starting"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json_response("OpenAPI 3.1", {"type": "object"})},
            }
        },
    }


def _model_schemas() -> dict[str, Any]:
    schema = Event.model_json_schema(ref_template=_REF, mode="validation")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    definitions["Event"] = schema
    return definitions


@cache
def openapi_document() -> dict[str, Any]:
    """The document served at ``/openapi.json`` (built once; it depends on code only)."""
    schemas = {
        **_model_schemas(),
        "Problem": _PROBLEM,
        "Error": _ERROR,
        "EventsRequest": _EVENTS_REQUEST,
        "EventResult": _EVENT_RESULT,
        "EventsResponse": _EVENTS_RESPONSE,
        "CollectRequest": _COLLECT_REQUEST,
        "CollectResponse": _COLLECT_RESPONSE,
        "Readiness": _READINESS,
        "EventTrace": EVENT_TRACE,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "capirelay gateway",
            "version": __version__,
            "description": "Server-side gateway for the Meta Conversions API.",
        },
        "paths": {
            "/v1/events": {"post": _events_operation()},
            "/v1/events/{event_id}": {"get": trace_operation()},
            "/v1/collect": {"post": _collect_operation(), "options": _preflight_operation()},
            "/v1/webhooks/{name}": {"post": _webhook_operation()},
            "/capirelay.js": {"get": _snippet_operation()},
            **_health_paths(),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ingestKey": {"type": "http", "scheme": "bearer"}},
        },
    }
