"""capirelay's side of each Meta finding: what to change in capirelay's config or mapping.

Meta's diagnostics say what is wrong from Meta's point of view (``title``,
``user_message``, ``action_uri``); this module says where that lives in a
capirelay deployment.  Keys are the ``da_checks`` keys of the reference, the
``dq:<event>:<title slug>`` keys capirelay gives Dataset Quality diagnostics,
and capirelay's own ``capirelay:*`` findings from the pixel settings and the
sent-versus-counted reconciliation.
"""

from __future__ import annotations

import re
from typing import Final

from capirelay.graph import GraphError

__all__ = [
    "AAM_OFF",
    "COOKIES_DISABLED",
    "HAD_PII",
    "TOKEN_EXPIRING",
    "UNDERCOUNT",
    "advice_for",
    "dq_key",
    "explain_settings_error",
]

AAM_OFF: Final = "capirelay:aam_off"
COOKIES_DISABLED: Final = "capirelay:first_party_cookies_disabled"
UNDERCOUNT: Final = "capirelay:server_undercount"
HAD_PII: Final = "capirelay:had_pii"
TOKEN_EXPIRING: Final = "capirelay:token_expiring"

_ADVICE: Final[dict[str, str]] = {
    "pixel_missing_param_in_events": (
        "Events reach Meta without parameters Meta needs (for catalog ads: content_ids, "
        "content_type, value, currency). Map them in your webhook mapping "
        "(`capirelay mapping test` shows what a payload becomes) or send them in custom_data "
        "from your backend; `capirelay doctor` lists the match keys each event lacks."
    ),
    "pixel_decline": (
        "Meta sees far fewer events than before. Check the dashboard Overview for a "
        "backlog or an open breaker, the DLQ for rejected events (`capirelay dlq list`), "
        "and your ingest keys and webhook secrets after a deploy."
    ),
    TOKEN_EXPIRING: (
        "The pixel's access token expires soon. Past that moment Meta refuses every event "
        "(error 190): the gateway keeps them queued, but none reaches Meta until a new token "
        "is in place. Generate a system-user token in Business Settings > Users > System "
        "users (they do not expire) and put it where the pixel's access_token reads it; "
        "`capirelay doctor` names the variable or file and whether a restart is needed."
    ),
    AAM_OFF: (
        "Automatic Advanced Matching is off, so browser events carry no hashed customer "
        "data for Meta to match the server events against. Run `capirelay pixel "
        "enable-aam` (all fields) or turn it on in Events Manager > Settings."
    ),
    COOKIES_DISABLED: (
        "The Pixel does not set first-party cookies, so there is no _fbp/_fbc for "
        "capirelay's snippet and beacon to forward: click attribution and the fbp dedup "
        "fallback are lost. Run `capirelay pixel first-party-cookies on`."
    ),
    UNDERCOUNT: (
        "Meta counts fewer server events than it acknowledged. First compare the gap with "
        "the deduplicated count of the same hours on the Diagnostics page: Meta discards a "
        "server copy that shares event_name and event_id with a browser event it received "
        "first (within 48 h), and does not document whether its server count still includes "
        "that copy, so a gap up to the deduplicated count may be dedup working (capirelay "
        "then shows a warning, not a failure). An old event_time is not the cause (Meta "
        "refuses the whole request, nothing is acknowledged), nor is a test_event_code "
        "(test events are counted too). A gap beyond the deduplicated events: "
        "keep the hours; `capirelay trace EVENT_ID` gives an event's fbtrace_id for Meta support."
    ),
    HAD_PII: (
        "Meta received events carrying unhashed personal data. capirelay hashes every "
        "user_data key it sends, so look for another sender on this pixel (the Pixel's URL "
        "or custom_data with an email, a plugin, a second integration) and for custom_data "
        "fields your mapping fills with personal data; remove them at the source."
    ),
}
_DQ_HINTS: Final = (
    ("ip", "Send client_ip_address from the real visitor: set trusted_proxies so capirelay "
     "reads X-Forwarded-For, and prefer IPv6 when the request has one."),
    ("email", "Map the customer's email into user_data.em in your mapping or backend."),
    ("phone", "Map the phone into user_data.ph with a country (default_country in the pixel "
     "config fills it for national numbers)."),
    ("fbc", "Forward _fbc: serve capirelay's snippet on your pages so the beacon carries it."),
    ("click", "Forward _fbc: serve capirelay's snippet on your pages so the beacon carries it."),
    ("browser", "Forward _fbp: serve capirelay's snippet so fbp reaches the server events."),
    ("dedup", "Send the same event_id from the browser Pixel and from capirelay."),
    ("event id", "Send the same event_id from the browser Pixel and from capirelay."),
    ("external", "Map your customer id into user_data.external_id."),
)  # fmt: skip
_WORDS: Final = re.compile(r"[a-z0-9]+")
_GENERIC: Final = (
    "Meta flags this for the pixel as a whole; open Meta's link for the affected events, "
    "then use `capirelay doctor` and the Match quality page to find which source or "
    "mapping sends them."
)


def advice_for(key: str, title: str = "") -> str:
    """What to change in capirelay for the finding ``key`` (with Meta's ``title``)."""
    if key in _ADVICE:
        return _ADVICE[key]
    if key.startswith("dq:"):
        # The finding is in Meta's title (or the key's slug of it), never in the event's
        # name, and a needle starts a word: "ip" is not the one in "zip" or "Shipping".
        finding = title or key.rsplit(":", 1)[-1]
        text = " ".join(_WORDS.findall(finding.lower()))
        for needle, hint in _DQ_HINTS:
            if re.search(rf"\b{needle}", text):
                return hint
    return _GENERIC


def dq_key(event_name: str, title: str) -> str:
    """A stable key for a Dataset Quality diagnostic (Meta gives them none)."""
    slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")[:60] or "diagnostic"
    return f"dq:{event_name}:{slug}"


def explain_settings_error(err: GraphError, pixel_id: str) -> str:
    """Meta's error for a pixel settings call, with the fix."""
    if err.code in (10, 200) or (err.code is not None and 200 <= err.code < 300):
        return (
            f"Meta refused: {err.message} (code {err.code}). The token's system user cannot "
            f"edit pixel {pixel_id}. In Business Settings > Users > System users, assign the "
            "user to this dataset with full control (Manage), generate a token with "
            "ads_management (or business_management), and put it in access_token for this "
            "pixel; or change the setting in Events Manager > Settings."
        )
    if err.code == 100 and err.subcode == 33:
        return (
            f"Meta says pixel {pixel_id} does not exist or this token cannot see it: check the "
            "pixel id in capirelay.toml and assign the token's system user to the dataset."
        )
    if err.code == 190:
        return (
            f"The access token for pixel {pixel_id} is invalid or expired ({err.message}): "
            "generate a new system-user token and update access_token."
        )
    return err.explanation
