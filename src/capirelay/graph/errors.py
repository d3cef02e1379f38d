"""Graph API failures as one typed exception, with what to do about each.

Every way a Conversions API call can fail (a Graph error body, an HTML page from a
proxy, a timeout, a refused connection) becomes a :class:`GraphError` carrying a
:class:`RetryClass`.  The delivery engine decides retry / throttle / circuit-break /
dead-letter from that class alone, so the classification lives here as a table
(:func:`classify`), next to the plain-language fix for each case (:func:`explain`).

Nothing here ever holds a token or a request body: ``str(error)`` is safe to log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from capirelay.meta_facts import (
    CODE_ACCESS_TOKEN,
    CODE_APP_RATE_LIMIT,
    CODE_CAPABILITY,
    CODE_DEPRECATED_ENDPOINT,
    CODE_PAGE_RATE_LIMIT,
    CODE_PERMISSION,
    CODE_PERMISSION_RANGE,
    CODE_POLICY_BLOCK,
    CODE_RATE_LIMIT,
    CODE_SERVICE,
    CODE_SESSION_KEY,
    CODE_SIGNATURE,
    CODE_TEMPORARY,
    CODE_TRANSIENT_5000,
    CODE_UNKNOWN,
    CODE_UNKNOWN_PATH,
    CODE_USER_RATE_LIMIT,
    CODE_VERSION_DEPRECATED,
    CODES_AD_ACCOUNT_RATE_LIMIT,
    SUBCODE_EVENT_TIME_WINDOW,
    SUBCODE_EVENT_TOO_OLD,
    SUBCODE_INVALID_EVENT,
    SUBCODE_INVALID_FBC,
    SUBCODE_LDU_REQUIRED,
    SUBCODE_PURCHASE_MISSING_VALUE,
)
from capirelay.pii_scrub import mask_pii

MAX_MESSAGE_CHARS = 300
_REDACTED = "[redacted]"
# Meta access tokens start with EAA; long opaque runs are redacted even when the
# token itself is not known, because a Graph message can echo a malformed token.
_TOKEN_LIKE = re.compile(r"\bEAA[A-Za-z0-9]{16,}\b")


class RetryClass(StrEnum):
    """What the caller should do.

    TRANSIENT: retry with jittered backoff until the event's deadline.
    THROTTLED: slow down (AIMD) and retry after ``retry_after`` when given.
    AUTH: the token or its permissions are wrong; every event of the pixel will fail
          the same way, so trip the pixel's breaker and alert; do not dead-letter.
    INVALID: this request's data is wrong; bisect the batch, dead-letter the culprit.
    CONFIG: the pixel id, API version or dataset setup is wrong; breaker + alert.
    UNKNOWN: an error capirelay does not know that names no event (a new code, a
          deprecated method, code 100 without an event-data subcode).  It is no
          evidence against the events: hold the pixel (breaker + probes), alert, and
          keep the events queued until Meta accepts them or their deadline passes.
    """

    TRANSIENT = "transient"
    THROTTLED = "throttled"
    AUTH = "auth"
    INVALID = "invalid"
    CONFIG = "config"
    UNKNOWN = "unknown"


BUC_THROTTLE_CODES = frozenset(CODES_AD_ACCOUNT_RATE_LIMIT)
THROTTLE_CODES = frozenset(
    {
        CODE_APP_RATE_LIMIT,
        CODE_USER_RATE_LIMIT,
        CODE_PAGE_RATE_LIMIT,
        CODE_RATE_LIMIT,
        *BUC_THROTTLE_CODES,
    }
)
# 368 ("temporarily blocked for policy violations") is retryable but only after a
# long pause; it is TRANSIENT so the event keeps its deadline, and explain() tells
# the operator to check the account, because a block that persists needs a human.
TRANSIENT_CODES = frozenset(
    {CODE_UNKNOWN, CODE_SERVICE, CODE_TEMPORARY, CODE_POLICY_BLOCK, CODE_TRANSIENT_5000}
)
# 3 (capability), 10 and 200-299 (permission) are AUTH rather than CONFIG: the fix is
# granting the app or system user a permission, i.e. the same token-side action as a
# 190, and like a 190 they fail every event of the pixel.
AUTH_CODES = frozenset(
    {
        CODE_CAPABILITY,
        CODE_PERMISSION,
        CODE_SESSION_KEY,
        CODE_SIGNATURE,
        CODE_ACCESS_TOKEN,
        *CODE_PERMISSION_RANGE,
    }
)
# The codes a new token fixes (the token itself is bad or missing); the rest of AUTH_CODES
# is fixed by a grant to the token's system user, the token staying as it is.
TOKEN_ERROR_CODES = frozenset({CODE_SESSION_KEY, CODE_SIGNATURE, CODE_ACCESS_TOKEN})
# 2635: deprecated version; 2500: unknown path component (nonsense version or path);
# 12: endpoint deprecated for this version.
CONFIG_CODES = frozenset({CODE_DEPRECATED_ENDPOINT, CODE_UNKNOWN_PATH, CODE_VERSION_DEPRECATED})


@dataclass(frozen=True, slots=True)
class SubcodeRule:
    """What one ``error_subcode`` of Graph code 100 means for the events of a request.

    ``scope``: ``event`` when the subcode is about one event's data (the batch may be
    split to find it, and that event dead-lettered); ``pixel`` when it is about the
    pixel or dataset (breaker, never bisect).  ``dead_letter``: the dead-letter reason
    for an event Meta refused alone with this subcode.  ``verified``: whether the
    meaning is documented (Meta or observed with the official SDK) or only inferred
    from third-party code (reference: official-sdk-and-spec.md §4.9, peers-and-pain.md
    Appendix A).
    """

    subcode: int
    meaning: str
    retry_class: RetryClass
    scope: Literal["event", "pixel"]
    dead_letter: Literal["invalid", "expired", "config"]
    verified: bool


# The one table of code-100 subcodes.  Only these (or an error whose message names an
# event index) may split a batch or dead-letter an event; any other code-100 subcode is
# UNKNOWN: the pixel is held and the events stay queued.
CODE_100_SUBCODES: dict[int, SubcodeRule] = {
    rule.subcode: rule
    for rule in (
        SubcodeRule(33, "pixel/dataset not found or not accessible", RetryClass.CONFIG,
                    "pixel", "config", verified=True),
        SubcodeRule(SUBCODE_INVALID_FBC, "click id (fbc) incorrectly formatted",
                    RetryClass.INVALID, "event", "invalid", verified=True),
        SubcodeRule(SUBCODE_EVENT_TOO_OLD, "event timestamp too old", RetryClass.INVALID,
                    "event", "expired", verified=True),
        SubcodeRule(2804007, "invalid event data (third-party map)", RetryClass.INVALID,
                    "event", "invalid", verified=False),
        SubcodeRule(SUBCODE_PURCHASE_MISSING_VALUE, "Purchase without value/currency",
                    RetryClass.INVALID, "event", "invalid", verified=True),
        SubcodeRule(2804016, "invalid event data (third-party map)", RetryClass.INVALID,
                    "event", "invalid", verified=False),
        SubcodeRule(2804017, "invalid event data (third-party map)", RetryClass.INVALID,
                    "event", "invalid", verified=False),
        SubcodeRule(SUBCODE_EVENT_TIME_WINDOW,
                    "event_time outside the window (third-party comment)",
                    RetryClass.INVALID, "event", "invalid", verified=False),
        # Per event (an event without data_processing_options), fixed in the setup.
        SubcodeRule(SUBCODE_LDU_REQUIRED, "Limited Data Use selection required",
                    RetryClass.CONFIG, "event", "config", verified=True),
        SubcodeRule(2804048, "invalid event data (third-party map)", RetryClass.INVALID,
                    "event", "invalid", verified=False),
        SubcodeRule(SUBCODE_INVALID_EVENT, "invalid event (observed with the official SDK)",
                    RetryClass.INVALID, "event", "invalid", verified=True),
    )
}  # fmt: skip

# How a Graph message points at one event of the request ("Event 3: ...", "index 3").
_NAMES_AN_EVENT = re.compile(r"\bevent\s*#?\d+|\bindex\b", re.IGNORECASE)


def names_an_event(*texts: str | None) -> bool:
    """Meta's message points at one event of the request (so the data, not the request)."""
    return any(_NAMES_AN_EVENT.search(text or "") for text in texts)


def classify(
    status: int | None,
    code: int | None,
    subcode: int | None,
    is_transient: bool,
    message: str | None = None,
) -> RetryClass:
    """Map a failure to its retry class (see the module docstring for the table).

    ``status`` is the HTTP status (None for a transport failure), ``code`` and
    ``subcode`` Graph's ``code``/``error_subcode`` (None when the body was not a
    Graph error), ``message`` Graph's message and user message (an event index named
    there makes an otherwise unknown error the data's).  Rate limits win over
    ``is_transient`` (they need a slower pace, not just another try); Graph's
    ``is_transient: true`` wins over everything else.
    """
    if code in THROTTLE_CODES:
        return RetryClass.THROTTLED
    if is_transient or code in TRANSIENT_CODES:
        return RetryClass.TRANSIENT
    if code in AUTH_CODES:
        return RetryClass.AUTH
    if code in CONFIG_CODES:
        return RetryClass.CONFIG
    if code == 100 and subcode in CODE_100_SUBCODES:
        return CODE_100_SUBCODES[subcode].retry_class
    if status == 429:
        return RetryClass.THROTTLED
    if status is None or status >= 500:
        return RetryClass.TRANSIENT
    if code is None:
        return _classify_without_graph_error(status)
    if names_an_event(message):
        return RetryClass.INVALID
    return RetryClass.UNKNOWN


def _classify_without_graph_error(status: int) -> RetryClass:
    # A response without a Graph error body did not come from Graph's API layer: a
    # 404 or 405 means base_url or the path is wrong (config); anything else (408, a
    # proxy's HTML page, a 200 that is not JSON) is treated as the transient
    # infrastructure failure it usually is (retrying is safe: event_id dedups).
    if status in (404, 405):
        return RetryClass.CONFIG
    return RetryClass.TRANSIENT


def is_event_level(err: GraphError) -> bool:
    """Meta refused something inside the events: the batch may be split to find it."""
    if err.retry_class is RetryClass.INVALID:
        return True
    rule = CODE_100_SUBCODES.get(err.subcode) if err.code == 100 and err.subcode else None
    return rule is not None and rule.scope == "event" and err.retry_class is rule.retry_class


def dead_letter_kind(err: GraphError) -> Literal["invalid", "expired", "config"]:
    """The dead-letter reason for an event Meta refused alone with ``err``."""
    rule = CODE_100_SUBCODES.get(err.subcode) if err.code == 100 and err.subcode else None
    if rule is not None and rule.scope == "event":
        return rule.dead_letter
    return "config" if err.retry_class is RetryClass.CONFIG else "invalid"


_EXPLANATIONS: dict[tuple[int, int | None], str] = {
    (100, 33): (
        "Pixel/dataset not found or not accessible with this token (100/33): check the pixel "
        "id, and in Business Settings give the token's system user access to this dataset."
    ),
    (100, SUBCODE_LDU_REQUIRED): (
        "Limited Data Use selection required (100/2804030): send data_processing_options "
        "(['LDU'] with country/state, or []) as your consent setup requires."
    ),
    (100, SUBCODE_EVENT_TOO_OLD): (
        "Event timestamp too old (100/2804003): event_time must be within 7 days (62 for "
        "physical_store); this event can no longer be delivered."
    ),
    (100, SUBCODE_INVALID_FBC): (
        "Click ID (fbc) incorrectly formatted (100/2804001): send fbc as "
        "fb.<subdomain_index>.<creation_time_ms>.<fbclid> without changing the fbclid's case."
    ),
    (100, SUBCODE_PURCHASE_MISSING_VALUE): (
        "Purchase without value or currency (100/2804009): map custom_data.value and a "
        "3-letter ISO 4217 custom_data.currency for every Purchase."
    ),
}

_CODE_EXPLANATIONS: dict[int, str] = {
    190: (
        "Access token invalid or expired (190): generate a new system-user token in Business "
        "Settings (Events Manager > Settings > Conversions API) and update the pixel's token."
    ),
    102: "API session invalid (102): generate a new system-user access token.",
    104: "No access token sent (104): set the pixel's access token in capirelay's configuration.",
    10: (
        "Permission denied (10): grant the token's system user the ads_management permission "
        "and access to this dataset."
    ),
    3: (
        "App capability missing (3): the app behind the token lacks the capability for this "
        "call; use a system-user token of an app with Marketing API access."
    ),
    2635: (
        "Deprecated Graph API version (2635): set api_version to a supported version (e.g. v26.0)."
    ),
    2500: (
        "Unknown path (2500): the API version or path is not valid; check api_version, and "
        "that graph_url is Graph's bare origin (https://graph.facebook.com, no /v26.0 in it)."
    ),
    12: "Endpoint deprecated for this API version (12): move to a current api_version.",
    368: (
        "Temporarily blocked for policy reasons (368): retry later and check Business Support "
        "Home for restrictions on the account."
    ),
}

_CLASS_EXPLANATIONS: dict[RetryClass, str] = {
    RetryClass.TRANSIENT: (
        "Temporary failure at Meta or on the network: retried automatically with backoff "
        "until the event's deadline; no action needed unless it persists."
    ),
    RetryClass.THROTTLED: (
        "Rate limited by Meta: capirelay slows down and retries; send fewer, larger batches "
        "(up to 1,000 events) if this persists."
    ),
    RetryClass.AUTH: (
        "Permission problem: grant the token's system user access to the dataset with "
        "ads_management, or generate a new system-user token."
    ),
    RetryClass.INVALID: (
        "Meta rejected the event data: see the error's user message for the event index and "
        "field, fix the mapping, then replay from the dead-letter queue."
    ),
    RetryClass.CONFIG: (
        "Configuration problem (pixel id, API version or dataset setup): fix capirelay's "
        "configuration; deliveries resume by themselves afterwards."
    ),
    RetryClass.UNKNOWN: (
        "Meta answered with an error capirelay does not know and that names no event: "
        "delivery for the pixel is paused and probed, events stay queued (nothing is "
        "dead-lettered for it); check Meta's status and the message, and report the code."
    ),
}


def explain(
    code: int | None,
    subcode: int | None,
    status: int | None = None,
    *,
    retry_class: RetryClass | str | None = None,
) -> str:
    """A sentence a marketer's engineer can act on: what went wrong and the fix.

    ``retry_class`` is the class the failure was given when it happened (stored with an
    attempt, a metric or a dead letter); without it the class is worked out again from
    ``status``, ``code`` and ``subcode``, and without ``status`` an unknown code reads as
    a transient failure, so give the status or the class wherever they are known."""
    specific = specific_explanation(code, subcode)
    if specific:
        return specific
    known = _retry_class_or_none(retry_class)
    cls = known if known is not None else classify(status, code, subcode, False)
    label = "" if code is None else f" ({code_label(code, subcode)})"
    return f"{_CLASS_EXPLANATIONS[cls]}{label}".strip()


def code_label(code: int | None, subcode: int | None) -> str:
    """Meta's code as it is written everywhere: ``190``, ``100/2804050``."""
    return f"{code}{'' if subcode is None else f'/{subcode}'}"


def specific_explanation(code: int | None, subcode: int | None) -> str | None:
    """The sentence for this code (and subcode) in particular, or ``None`` where only its
    class's general sentence applies."""
    if code is None:
        return None
    specific = _EXPLANATIONS.get((code, subcode)) or _CODE_EXPLANATIONS.get(code)
    if specific:
        return specific
    if code == 100 and subcode is not None and 2804000 <= subcode <= 2804999:
        return (
            f"Invalid event data (100/{subcode}): the error's user message names the event "
            "index and field; fix the mapping, then replay from the dead-letter queue."
        )
    return None


def _retry_class_or_none(value: RetryClass | str | None) -> RetryClass | None:
    if value is None or isinstance(value, RetryClass):
        return value
    try:
        return RetryClass(value)
    except ValueError:
        return None


def meta_says(message: str | None, user_title: str | None, user_msg: str | None) -> str:
    """One line of what Meta said: ``message``, then ``error_user_title`` and
    ``error_user_msg`` where Meta sent them and they add something."""
    parts = [message] if message else []
    for extra in (user_title, user_msg):
        if extra and not any(extra in part for part in parts):
            parts.append(extra)
    return " — ".join(parts)


def meta_says_of(answer: Mapping[str, Any]) -> str | None:
    """:func:`meta_says` of a stored attempt or error (``Attempt.to_dict``,
    ``GraphError.to_dict``), or ``None`` when it holds no message at all."""
    text = meta_says(
        _as_str(answer.get("message")),
        _as_str(answer.get("user_title")),
        _as_str(answer.get("user_msg")),
    )
    return text or None


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Cap ``text`` and remove known secrets, token-looking runs and personal data (an
    email address, a phone number: Meta's messages may quote a refused value) from it."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    text = mask_pii(_TOKEN_LIKE.sub(_REDACTED, text))
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


class GraphError(Exception):
    """A failed Graph API call: Graph's error fields plus what to do about it."""

    def __init__(
        self,
        *,
        status: int | None,
        code: int | None = None,
        subcode: int | None = None,
        type: str | None = None,  # Graph's own field name
        message: str = "",
        user_title: str | None = None,
        user_msg: str | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool = False,
        retry_after: float | None = None,
        retry_class: RetryClass | None = None,
        address: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.subcode = subcode
        self.type = type
        self.message = message
        self.user_title = user_title
        self.user_msg = user_msg
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        self.retry_after = retry_after
        # Where a transport failure happened: scheme://host:port (graph_address), or None.
        self.address = address
        self.retry_class = retry_class or classify(
            status, code, subcode, is_transient, f"{message}\n{user_msg or ''}"
        )
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [
            f"status={self.status}",
            f"code={self.code}",
            f"subcode={self.subcode}",
            f"type={self.type}",
            f"class={self.retry_class}",
        ]
        if self.fbtrace_id:
            parts.append(f"fbtrace_id={self.fbtrace_id}")
        return f"Graph API error ({', '.join(parts)}): {self.meta_says}"

    def __repr__(self) -> str:
        return f"GraphError({self})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only __init__ do not pickle by default (multiprocessing
        # and some log handlers pickle exceptions).
        return (_rebuild, (self.to_dict(),))

    @property
    def explanation(self) -> str:
        return explain(self.code, self.subcode, self.status)

    @property
    def meta_says(self) -> str:
        """Meta's message with its user-facing title and message (the only place Meta
        names the refused event's index and field: ``message`` is "Invalid parameter"
        for every code 100 subcode)."""
        return meta_says(self.message, self.user_title, self.user_msg)

    def to_dict(self) -> dict[str, Any]:
        """Safe to log or store in a dead-letter record (no token, capped message)."""
        return {
            "status": self.status,
            "code": self.code,
            "subcode": self.subcode,
            "type": self.type,
            "message": self.message,
            "user_title": self.user_title,
            "user_msg": self.user_msg,
            "fbtrace_id": self.fbtrace_id,
            "is_transient": self.is_transient,
            "retry_after": self.retry_after,
            "retry_class": str(self.retry_class),
            "address": self.address,
        }

    @classmethod
    def from_response(
        cls,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        secrets: tuple[str, ...] = (),
    ) -> GraphError:
        """Parse a non-2xx (or error-carrying) response; never raises."""
        error = _graph_error_object(body)
        code = None if error is None else _as_int(error.get("code"))
        retry_after = retry_after_from_headers(headers, code=code)
        if error is None:
            return cls(
                status=status,
                message=_describe_non_graph_body(status, headers),
                retry_after=retry_after,
            )
        return cls(
            status=status,
            code=code,
            subcode=_as_int(error.get("error_subcode")),
            type=_as_str(error.get("type")),
            message=redact(_as_str(error.get("message")) or "", secrets),
            user_title=_redact_optional(error.get("error_user_title"), secrets),
            user_msg=_redact_optional(error.get("error_user_msg"), secrets),
            fbtrace_id=_as_str(error.get("fbtrace_id")),
            is_transient=error.get("is_transient") is True,
            retry_after=retry_after,
        )

    @classmethod
    def transport(cls, kind: str, exc: BaseException, *, url: str | None = None) -> GraphError:
        """A timeout or connection failure: no HTTP status, always TRANSIENT.

        Only the exception's class name is kept (httpx messages can contain the URL), and
        of ``url``, the request's, only :func:`graph_address`: scheme, host and port.
        """
        address = graph_address(url) if url else None
        return cls(
            status=None,
            type="transport",
            message=f"{kind} ({type(exc).__name__})" + (f" to {address}" if address else ""),
            retry_class=RetryClass.TRANSIENT,
            is_transient=True,
            address=address,
        )


def graph_address(url: str) -> str:
    """``scheme://host:port`` of ``url``: what a connection was tried to, safe to print.

    A user name and password (a forwarding proxy's), the path, the query (an
    ``access_token`` there) and the fragment are left out; the port is always named,
    the scheme's default included, so the address says exactly where it knocked.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower() or "http"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: no address to name beyond the host
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _rebuild(data: dict[str, Any]) -> GraphError:
    data = dict(data)
    data["retry_class"] = RetryClass(data["retry_class"])
    return GraphError(**data)


def _graph_error_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed["error"]
    return None


def _describe_non_graph_body(status: int, headers: Mapping[str, str]) -> str:
    # The body itself is never quoted: an HTML error page can echo the request.
    content_type = headers.get("content-type", "unknown content type").split(";")[0]
    return f"HTTP {status} without a Graph error body ({content_type})"


def retry_after_from_headers(
    headers: Mapping[str, str], *, code: int | None = None
) -> float | None:
    """Seconds to wait, from ``Retry-After`` or Meta's business-use-case usage header.

    ``X-Business-Use-Case-Usage`` maps a business id to a list of usage objects whose
    ``estimated_time_to_regain_access`` is in minutes; the longest one wins.  It is
    read only for the business-use-case rate limits (codes 80000-80014) it describes:
    Graph sends it on ordinary responses too, where it says nothing about this error.

    A wait of zero or less (``Retry-After: 0``, a date in the past, an estimate of 0
    minutes while Meta still refuses) is no estimate at all: ``None``, so the caller
    falls back to its own escalating pause instead of retrying at once.
    """
    explicit = _parse_retry_after(headers.get("retry-after"))
    if explicit is not None:
        return _positive_or_none(explicit)
    if code is None or code not in BUC_THROTTLE_CODES:
        return None
    return _positive_or_none(_parse_buc_usage(headers.get("x-business-use-case-usage")))


def _positive_or_none(seconds: float | None) -> float | None:
    return seconds if seconds is not None and seconds > 0 else None


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when - datetime.now(UTC)).total_seconds()


def _parse_buc_usage(value: str | None) -> float | None:
    if not value:
        return None
    try:
        usage = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(usage, dict):
        return None
    minutes = [
        float(entry["estimated_time_to_regain_access"])
        for entries in usage.values()
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(entry.get("estimated_time_to_regain_access"), int | float)
    ]
    return max(minutes) * 60.0 if minutes else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # ASCII digits only: str.isdigit() is true for "²", which int() then refuses.
    if isinstance(value, str) and 0 < len(value) <= 18 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _redact_optional(value: Any, secrets: tuple[str, ...]) -> str | None:
    text = _as_str(value)
    return None if text is None else redact(text, secrets)
