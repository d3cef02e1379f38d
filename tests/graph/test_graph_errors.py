"""Graph failures are classified by a table, explained, and never leak a token."""

from __future__ import annotations

import pickle

import orjson
import pytest

from capirelay.graph import GraphError, RetryClass, classify, explain
from capirelay.graph.errors import CODE_100_SUBCODES, graph_address

T, TH, A, INV, C, U = (
    RetryClass.TRANSIENT,
    RetryClass.THROTTLED,
    RetryClass.AUTH,
    RetryClass.INVALID,
    RetryClass.CONFIG,
    RetryClass.UNKNOWN,
)

# (http status, code, subcode, is_transient) -> class; one row per rule.
CLASSIFICATION = [
    (500, 1, None, False, T),
    (500, 2, None, True, T),
    (400, 341, None, False, T),
    (400, 368, 1390008, False, T),
    (400, 5000, None, False, T),
    (500, None, None, False, T),
    (502, None, None, False, T),
    (503, None, None, False, T),
    (None, None, None, False, T),
    (400, None, None, False, T),
    (200, None, None, False, T),
    (400, 4, None, True, TH),
    (400, 17, 2446079, True, TH),
    (400, 613, 1487742, False, TH),
    (400, 80000, None, False, TH),
    (400, 80004, 2446079, True, TH),
    (400, 80014, None, False, TH),
    (429, None, None, False, TH),
    (429, 100, None, False, TH),  # code 100 without an event-data subcode is no verdict
    (400, 190, None, False, A),
    (400, 190, 460, False, A),
    (400, 190, 463, False, A),
    (400, 102, None, False, A),
    (400, 104, None, False, A),
    (403, 10, None, False, A),
    (403, 200, None, False, A),
    (403, 294, None, False, A),
    (400, 3, None, False, A),
    (400, 100, 2804003, False, INV),
    (400, 100, 2804001, False, INV),
    (400, 100, 2804009, False, INV),
    (400, 100, 2804050, False, INV),
    (400, 100, 2804007, False, INV),  # third-party map, marked unverified in the table
    (400, 100, 2804019, False, INV),
    (400, 100, None, False, U),  # names no event: hold the pixel, never dead-letter
    (400, 100, 2804999, False, U),  # not in the table
    (400, 100, 1234, False, U),
    (400, 999, None, False, U),
    (400, 9999, None, False, U),
    (400, 11, None, False, U),  # "method deprecated"
    (400, 100, 33, False, C),
    (400, 100, 2804030, False, C),
    (400, 2635, None, False, C),
    (400, 2500, None, False, C),
    (400, 12, None, False, C),
    (404, None, None, False, C),
    (405, None, None, False, C),
    (400, 100, 2804003, True, T),  # Graph's is_transient wins over the code
    (400, 190, None, True, T),
    (400, 4, None, False, TH),  # rate limits stay THROTTLED
]


@pytest.mark.parametrize(
    ("code", "subcode", "message", "expected"),
    [
        (100, None, "Invalid parameter", U),
        (100, None, "Event 3: Invalid parameter", INV),  # names an event: the data's
        (9999, None, "(#100) index 7 has an invalid value", INV),
        (9999, None, "Unknown error", U),
        (100, 2804050, "", INV),
    ],
)
def test_an_error_naming_an_event_is_the_datas(
    code: int, subcode: int | None, message: str, expected: RetryClass
) -> None:
    assert classify(400, code, subcode, False, message) is expected
    assert GraphError(status=400, code=code, subcode=subcode, message=message).retry_class is (
        expected
    )


def test_the_subcode_table_marks_what_is_unverified() -> None:
    assert CODE_100_SUBCODES[2804030].scope == "event"  # per event, but a setup fix
    assert CODE_100_SUBCODES[2804030].retry_class is C
    assert CODE_100_SUBCODES[33].scope == "pixel"
    assert CODE_100_SUBCODES[2804003].dead_letter == "expired"
    unverified = {s for s, rule in CODE_100_SUBCODES.items() if not rule.verified}
    assert unverified == {2804007, 2804016, 2804017, 2804019, 2804048}
    assert all(2804000 <= s <= 2804999 for s in CODE_100_SUBCODES if s != 33)


@pytest.mark.parametrize(("status", "code", "subcode", "transient", "expected"), CLASSIFICATION)
def test_classify(
    status: int | None, code: int | None, subcode: int | None, transient: bool, expected: RetryClass
) -> None:
    assert classify(status, code, subcode, transient) is expected


@pytest.mark.parametrize(
    ("code", "subcode", "needle"),
    [
        (190, None, "new system-user token"),
        (190, 463, "Access token invalid or expired (190)"),
        (100, 33, "access to this dataset"),
        (100, 2804030, "data_processing_options"),
        (100, 2804003, "7 days"),
        (100, 2804019, "event index"),
        (2635, None, "api_version"),
        # A version in graph_url gives /v26.0/v26.0/...: the other cause of 2500.
        (2500, None, "that graph_url is Graph's bare origin"),
        (4, None, "Rate limited"),
        (1, None, "retried automatically"),
        (200, None, "ads_management"),
        (None, None, "retried automatically"),
    ],
)
def test_explain_gives_an_actionable_fix(
    code: int | None, subcode: int | None, needle: str
) -> None:
    assert needle in explain(code, subcode)


def test_explain_without_graph_error_uses_status() -> None:
    assert "Configuration" in explain(None, None, 404)


def graph_body(**error: object) -> bytes:
    return orjson.dumps({"error": error})


def test_from_response_reads_every_graph_field() -> None:
    body = graph_body(
        message="Invalid parameter",
        type="OAuthException",
        code=100,
        error_subcode=2804003,
        is_transient=False,
        error_user_title="Event Timestamp Too Old",
        error_user_msg="Event 3: event_time too old",
        fbtrace_id="AbC123",
    )
    error = GraphError.from_response(400, {"content-type": "application/json"}, body)
    assert (error.status, error.code, error.subcode, error.type) == (
        400,
        100,
        2804003,
        "OAuthException",
    )
    assert (error.user_title, error.user_msg, error.fbtrace_id) == (
        "Event Timestamp Too Old",
        "Event 3: event_time too old",
        "AbC123",
    )
    assert error.retry_class is RetryClass.INVALID
    assert error.is_transient is False
    assert error.retry_after is None
    text = str(error)
    for part in ("400", "100", "2804003", "OAuthException", "AbC123", "Invalid parameter"):
        assert part in text


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (502, "text/html", b"<html><body>Bad Gateway for buyer@example.com</body></html>", T),
        (503, "text/plain", b"Service Unavailable", T),
        (400, "text/html", b"<html>proxy says no</html>", T),
        (404, "text/html", b"<html>Not Found</html>", C),
        (500, "application/json", b"{not json", T),
        (400, "application/json", b'{"error": "a string, not an object"}', T),
    ],
)
def test_non_graph_bodies(
    status: int, content_type: str, body: bytes, expected: RetryClass
) -> None:
    error = GraphError.from_response(status, {"content-type": content_type}, body)
    assert error.code is None
    assert error.retry_class is expected
    assert "buyer@example.com" not in str(error), "bodies are never quoted"
    assert content_type in error.message


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"retry-after": "30"}, 30.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "garbage"}, None),
        (
            {
                "x-business-use-case-usage": orjson.dumps(
                    {
                        "123": [
                            {"type": "ads_management", "estimated_time_to_regain_access": 2},
                            {"type": "ads_insights", "estimated_time_to_regain_access": 5},
                        ]
                    }
                ).decode()
            },
            300.0,
        ),
        ({"x-business-use-case-usage": '{"123": [{"type": "ads_management"}]}'}, None),
        ({"x-business-use-case-usage": "not json"}, None),
        (
            {
                "retry-after": "7",
                "x-business-use-case-usage": '{"1": [{"estimated_time_to_regain_access": 9}]}',
            },
            7.0,
        ),
        ({}, None),
        # No wait is no estimate: the caller's escalating pause applies (review finding 1).
        ({"retry-after": "0"}, None),
        ({"retry-after": "-3"}, None),
        ({"x-business-use-case-usage": '{"1": [{"estimated_time_to_regain_access": 0}]}'}, None),
        (
            {
                "retry-after": "0",
                "x-business-use-case-usage": '{"1": [{"estimated_time_to_regain_access": 9}]}',
            },
            None,
        ),
    ],
)
def test_retry_after(headers: dict[str, str], retry_after: float | None) -> None:
    body = graph_body(message="(#80004) too many calls", type="OAuthException", code=80004)
    error = GraphError.from_response(400, headers, body)
    assert error.retry_class is RetryClass.THROTTLED
    assert error.retry_after == retry_after


def test_retry_after_http_date_in_the_past_is_no_estimate() -> None:
    error = GraphError.from_response(
        503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"Service Unavailable"
    )
    assert error.retry_after is None


@pytest.mark.parametrize(
    ("code", "expected"), [(80004, 120.0), (80000, 120.0), (4, None), (17, None)]
)
def test_usage_header_is_read_only_for_business_use_case_limits(
    code: int, expected: float | None
) -> None:
    # Graph attaches X-Business-Use-Case-Usage to many answers; only the BUC rate
    # limits (80000-80014) are explained by it.
    headers = {"x-business-use-case-usage": '{"1": [{"estimated_time_to_regain_access": 2}]}'}
    body = graph_body(message="rate limited", type="OAuthException", code=code)
    error = GraphError.from_response(400, headers, body)
    assert error.retry_class is RetryClass.THROTTLED
    assert error.retry_after == expected


def test_known_token_and_token_looking_runs_are_redacted() -> None:
    token = "EAAGm0PX4ZCpsBAKZCZBsecretsecretsecret"
    body = graph_body(
        message=f"Malformed access token {token}",
        type="OAuthException",
        code=190,
        error_user_msg="token EAABwzLixnjYBO1234567890abcdefghij was rejected",
    )
    error = GraphError.from_response(400, {}, body, secrets=(token,))
    assert token not in str(error)
    assert "[redacted]" in error.message
    assert "EAABwzLixnjYBO1234567890" not in (error.user_msg or "")


def test_long_messages_are_capped() -> None:
    body = graph_body(message="x" * 5000, type="OAuthException", code=100)
    error = GraphError.from_response(400, {}, body)
    assert len(error.message) <= 300
    assert len(str(error)) < 500


def test_transport_error_is_transient_without_status() -> None:
    error = GraphError.transport("timeout", TimeoutError("https://graph.example/?access_token=x"))
    assert error.status is None
    assert error.retry_class is RetryClass.TRANSIENT
    assert "access_token" not in str(error)
    assert "TimeoutError" in str(error)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://graph.facebook.com/v26.0/123/events", "https://graph.facebook.com:443"),
        ("http://127.0.0.1:8765/v26.0/1/events?access_token=EAAx#f", "http://127.0.0.1:8765"),
        ("https://user:pa55word@egress.example/meta/v26.0/1/events", "https://egress.example:443"),
        ("http://[::1]:9/v26.0/1/events", "http://[::1]:9"),
    ],
)
def test_graph_address_is_scheme_host_and_port_only(url: str, address: str) -> None:
    assert graph_address(url) == address


def test_a_transport_error_names_the_address_it_tried_and_nothing_else() -> None:
    url = "https://proxyuser:pa55word@egress.example/meta/v26.0/1/events?access_token=EAAx"
    error = GraphError.transport("connection error", OSError("boom"), url=url)
    assert error.address == "https://egress.example:443"
    assert str(error).endswith("connection error (OSError) to https://egress.example:443")
    for secret in ("proxyuser", "pa55word", "/meta", "access_token", "EAAx"):
        assert secret not in str(error)
    assert pickle.loads(pickle.dumps(error)).address == error.address


def test_graph_error_pickles_and_serializes() -> None:
    error = GraphError.from_response(
        400, {}, graph_body(message="m", type="OAuthException", code=190, error_subcode=463)
    )
    clone = pickle.loads(pickle.dumps(error))
    assert clone.to_dict() == error.to_dict()
    assert orjson.loads(orjson.dumps(error.to_dict()))["retry_class"] == "auth"
    assert error.explanation.startswith("Access token invalid")


def test_a_code_written_with_other_digits_is_no_code_not_a_crash() -> None:
    body = b'{"error": {"message": "x", "code": "\xc2\xb2", "error_subcode": "1\xd9\xa1"}}'
    err = GraphError.from_response(400, {}, body)
    assert (err.code, err.subcode) == (None, None)
    assert GraphError.from_response(400, {}, b'{"error": {"code": "190"}}').code == 190
