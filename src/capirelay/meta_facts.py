"""Meta's facts, each defined once: limits, windows, ``user_data`` keys, error subcodes.

Everything here is a number or a list Meta documents (or that was observed and is
labelled so); every other module imports it from here: the library
(:mod:`capirelay.events`, :mod:`capirelay.graph`), the rules
(:mod:`capirelay.validate`), the gateway (:mod:`capirelay.server`,
:mod:`capirelay.outbox`) and the emulator that stands in for Meta in tests.
References are to ``docs/`` and to the project's reference notes
(``official-sdk-and-spec.md``, ``peers-and-pain.md``).

This module imports nothing from the project: it is the leaf every layer may use.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BUILDER_APPENDIX_PATTERN",
    "BUILDER_LEGACY_APPENDIX_TOKENS",
    "CODES_AD_ACCOUNT_RATE_LIMIT",
    "CODE_ACCESS_TOKEN",
    "CODE_APP_RATE_LIMIT",
    "CODE_CAPABILITY",
    "CODE_DEPRECATED_ENDPOINT",
    "CODE_INVALID_PARAMETER",
    "CODE_PAGE_RATE_LIMIT",
    "CODE_PERMISSION",
    "CODE_PERMISSION_RANGE",
    "CODE_POLICY_BLOCK",
    "CODE_RATE_LIMIT",
    "CODE_SERVICE",
    "CODE_SESSION_KEY",
    "CODE_SIGNATURE",
    "CODE_TEMPORARY",
    "CODE_TRANSIENT_5000",
    "CODE_UNKNOWN",
    "CODE_UNKNOWN_PATH",
    "CODE_USER_RATE_LIMIT",
    "CODE_VERSION_DEPRECATED",
    "DAY",
    "DEDUP_WINDOW_SECONDS",
    "HASHED_USER_DATA_KEYS",
    "HASHED_VALUE_PATTERN",
    "IP_UA_PAIR_BONUS",
    "MATCH_KEY_WEIGHTS",
    "MAX_EVENTS_PER_REQUEST",
    "MAX_EVENT_AGE_PHYSICAL_STORE_SECONDS",
    "MAX_EVENT_AGE_SECONDS",
    "MULTI_VALUE_HASHED_KEYS",
    "SINGLE_VALUE_HASHED_KEYS",
    "STANDARD_EVENTS",
    "SUBCODE_EVENT_TIME_WINDOW",
    "SUBCODE_EVENT_TOO_OLD",
    "SUBCODE_INVALID_EVENT",
    "SUBCODE_INVALID_FBC",
    "SUBCODE_LDU_REQUIRED",
    "SUBCODE_PURCHASE_MISSING_VALUE",
    "UNHASHED_USER_DATA_KEYS",
    "USER_DATA_KEYS",
]

# --- Limits ------------------------------------------------------------------

# "You can send up to 1,000 events in data" (Using the API; reference §4.3).  One
# request over it is refused whole (Graph 100 "too many events"), so every layer
# that builds or accepts a batch checks it: events.encode_request, the Graph
# client, validate_batch, POST /v1/events and the emulator.
MAX_EVENTS_PER_REQUEST: Final = 1000

# Meta's standard events (Pixel reference); any other name is a custom event.
STANDARD_EVENTS: Final = frozenset(
    {
        "AddPaymentInfo",
        "AddToCart",
        "AddToWishlist",
        "CompleteRegistration",
        "Contact",
        "CustomizeProduct",
        "Donate",
        "FindLocation",
        "InitiateCheckout",
        "Lead",
        "PageView",
        "Purchase",
        "Schedule",
        "Search",
        "StartTrial",
        "SubmitApplication",
        "Subscribe",
        "ViewContent",
    }
)

# --- Windows -----------------------------------------------------------------

DAY: Final = 86_400
# event_time may be at most 7 days old (server-event parameters), 62 days for
# action_source=physical_store (offline events); older is 100/2804003.
MAX_EVENT_AGE_SECONDS: Final = 7 * DAY
MAX_EVENT_AGE_PHYSICAL_STORE_SECONDS: Final = 62 * DAY
# Meta deduplicates an event_id (with event_name) seen within 48 hours
# (Deduplicate Pixel and Server Events).  The outbox keeps ids this long, beacon
# tokens live at most this long, the emulator flags duplicates in this window.
DEDUP_WINDOW_SECONDS: Final = 48 * 3600

# --- user_data keys (Customer Information Parameters) --------------------------

# Hashed keys Meta accepts as a string or a list of strings.
MULTI_VALUE_HASHED_KEYS: Final[tuple[str, ...]] = (
    "em",
    "ph",
    "fn",
    "ln",
    "db",
    "ge",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
)
# Hashed keys sent as one string (the SDK's f5first ... doby).
SINGLE_VALUE_HASHED_KEYS: Final[tuple[str, ...]] = (
    "f5first",
    "f5last",
    "fi",
    "dobd",
    "dobm",
    "doby",
)
# Keys Meta requires SHA-256 hashed (external_id: hashing only recommended).
HASHED_USER_DATA_KEYS: Final[tuple[str, ...]] = MULTI_VALUE_HASHED_KEYS + SINGLE_VALUE_HASHED_KEYS

# The param builder's appendix (official-sdk-and-spec.md §3.3): "." and the base64url
# encoding of 6 bytes (format, language, type, version), 8 characters, or a legacy
# 2-character token, one per builder language (PHP, Python, Java, Node, Ruby, client JS).
# The builder appends it to fbc, fbp, the client IP and every value it hashes
# ("<sha256 hex>.AQQCAQMC"), and Meta's guidance is to send the builder's values as they
# are (§3.5).
BUILDER_LEGACY_APPENDIX_TOKENS: Final = frozenset({"AQ", "Ag", "Aw", "BA", "BQ", "Bg"})
BUILDER_APPENDIX_PATTERN: Final = (
    r"(?:[A-Za-z0-9_-]{8}|" + "|".join(sorted(BUILDER_LEGACY_APPENDIX_TOKENS)) + ")"
)
# A hashed user_data value as Meta takes it: a lowercase SHA-256 hex digest, followed by
# the builder's appendix when the value came from the param builder.
HASHED_VALUE_PATTERN: Final = rf"[0-9a-f]{{64}}(?:\.{BUILDER_APPENDIX_PATTERN})?"
# Keys sent as they are: browser, device and platform ids, IP and user agent.
UNHASHED_USER_DATA_KEYS: Final[tuple[str, ...]] = (
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
    "whatsapp_business_account_id",
)
USER_DATA_KEYS: Final = frozenset(HASHED_USER_DATA_KEYS + UNHASHED_USER_DATA_KEYS)

# --- Match-quality weights -------------------------------------------------------

# Meta publishes no Event Match Quality weights (reference §5: "Exact weights are
# not published"); it names em, ph, client_ip_address and fn+ln "high-quality"
# and its Dataset Quality example ranks email (+59 % ACR) above IP (+21 %).  These
# per-key weights are capirelay's documented guess (table in
# capirelay.ops.quality), used by the predicted score and by the emulator's
# Dataset Quality answer alike.  They sum to 9.5, plus IP_UA_PAIR_BONUS for an
# event carrying both IP and user agent: 10.  ``ph`` is 1.5, not 2.0: nothing in
# the reference puts phone above IP, and the table must sum to Meta's 10.
MATCH_KEY_WEIGHTS: Final[dict[str, float]] = {
    "em": 2.5,
    "ph": 1.5,
    "fn": 0.5,  # fn and ln count only as a pair in the predicted score (1.0)
    "ln": 0.5,
    "db": 0.25,
    "ct": 0.0625,
    "st": 0.0625,
    "zp": 0.0625,
    "country": 0.0625,
    "external_id": 0.75,
    "client_ip_address": 1.0,
    "client_user_agent": 0.5,
    "fbc": 1.0,
    "fbp": 0.75,
}
# "Sending both [IP and user agent] ... may help improve event matching" (Best Practices).
IP_UA_PAIR_BONUS: Final = 0.5

# --- Error subcodes (Graph error code 100) ----------------------------------------

# Documented by observation (RudderStack's error map, reference Appendix A).
SUBCODE_INVALID_FBC: Final = 2804001
SUBCODE_EVENT_TOO_OLD: Final = 2804003
SUBCODE_PURCHASE_MISSING_VALUE: Final = 2804009
SUBCODE_LDU_REQUIRED: Final = 2804030
# A public project comments 2804019 as "event_time outside the window".
SUBCODE_EVENT_TIME_WINDOW: Final = 2804019
# Observed with the official SDK for invalid events whose exact subcode is unknown.
SUBCODE_INVALID_EVENT: Final = 2804050

# --- Graph error codes (top level) -------------------------------------------------

# Graph API "Handling Errors" page and the Marketing API rate-limiting page (reference
# §8 and Appendix A); what capirelay does with each is graph.errors' table.
CODE_UNKNOWN: Final = 1  # "An unknown error occurred" (retry)
CODE_SERVICE: Final = 2  # "Service temporarily unavailable" (retry)
CODE_CAPABILITY: Final = 3  # the app lacks the capability
CODE_APP_RATE_LIMIT: Final = 4  # application request limit reached
CODE_PERMISSION: Final = 10  # permission denied
CODE_DEPRECATED_ENDPOINT: Final = 12  # method deprecated for this API version
CODE_USER_RATE_LIMIT: Final = 17  # user request limit reached
CODE_PAGE_RATE_LIMIT: Final = 32  # page request limit reached
CODE_INVALID_PARAMETER: Final = 100  # invalid parameter; event data carries a subcode
CODE_SESSION_KEY: Final = 102  # session key invalid
CODE_SIGNATURE: Final = 104  # incorrect signature / access token required
CODE_ACCESS_TOKEN: Final = 190  # access token invalid or expired (subcode 463, 460...)
CODE_PERMISSION_RANGE: Final = range(200, 300)  # "(#2xx) permission" errors, e.g. (#200)
CODE_TEMPORARY: Final = 341  # application limit / temporary issue
CODE_POLICY_BLOCK: Final = 368  # temporarily blocked for policy violations
CODE_RATE_LIMIT: Final = 613  # calls to this API exceeded the rate limit
CODE_UNKNOWN_PATH: Final = 2500  # unknown path components (nonsense version or path)
CODE_VERSION_DEPRECATED: Final = 2635  # the requested API version is deprecated
CODE_TRANSIENT_5000: Final = 5000  # observed as temporary
# Business Use Case rate limits (ads_management, custom audiences, ...): 80000-80014.
CODES_AD_ACCOUNT_RATE_LIMIT: Final = range(80000, 80015)
