"""Personal data and secrets where Meta must not receive them: URLs and custom data.

Meta flags events whose ``event_source_url`` / ``referrer_url`` query strings
or ``custom_data`` carry personal data (an email, a phone number), and can
restrict the pixel for it; a capability link (``?key=``, ``?token=``) in a URL
hands a secret to everyone who reads the queue or Meta's logs.  Identifiers
belong in ``user_data``, where they are normalized and hashed.

:func:`scrub_event` finds such values in the wire event at ingest, before it is
stored, and applies the pixel's ``pii_in_urls`` policy:

* ``strip`` (default): drop the query parameter, the path segment or the
  ``custom_data`` value (``search_string`` included: a search for a phone
  number or an email is personal data like any other value), keep the event,
  and record a warning ``pii_removed`` naming the field;
* ``reject``: refuse the event with the error ``pii_in_event``;
* ``keep``: send as is (a deliberate choice, e.g. values known to be synthetic),
  except a URL's userinfo, which no policy sends.

What counts: in a URL, its userinfo (``user:password@``, whatever it holds), a
path segment holding an email address, and query parameters and the fragment
as below; anywhere, an email address in a value (after percent-decoding), a
phone-like value (a leading ``+``, separators such as ``(650) 555-1212`` or
``(650)555-1212``, or a national number in two groups after its trunk ``0``
such as ``07700 900123``; 8-15 digits: bare digit runs are order ids and
timestamps, and dates such as ``01.02.2024`` and dotted thousands such as
``12.999.000`` are not phones), any value of a parameter or key named like an
email or phone field, and any parameter named like a secret (``key``,
``token``, ``password``...).  A URL whose host cannot be parsed is split by
hand and cleaned by the same rules.  Problems name the field, never the value
or the parameter's name.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal
from urllib.parse import (
    SplitResult,
    parse_qsl,
    unquote,
    unquote_plus,
    urlencode,
    urlsplit,
    urlunsplit,
)

import orjson

from capirelay.problems import Problem, error, warning

__all__ = ["PIIPolicy", "contains_pii", "mask_pii", "scrub_event", "scrub_url"]

PIIPolicy = Literal["strip", "reject", "keep"]

_URL_FIELDS = ("event_source_url", "referrer_url")
_CONTAINER_TYPES = (dict, list)
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# A phone written as one: "+" and digits, digit groups with separators ("650-555-1212",
# "(650)555-1212"), or a national number in two groups after its trunk 0 ("07700 900123",
# "030 12345678"); found anywhere in a text ("call 650-555-1212"), never inside a longer
# digit run.  Dates ("01.02.2024") and dotted thousands ("12.999.000") are not phones.
_PHONE = re.compile(
    r"(?<![\d+])"
    r"(?!\d{1,2}([.\-/])\d{1,2}\1(?:19|20)\d\d(?!\d))"
    r"(?!\d{1,3}\.\d{3}\.\d{3}(?![\d.]))"
    r"(?:\+\s?\d[\d\s().\-]{6,20}\d"
    r"|\(\d{2,5}\)\s?\d{2,4}[\s.\-]\d{3,5}|\(\d{3}\)\s?\d{7}"
    r"|\(?\d{2,4}\)?[\s.\-]\d{2,4}[\s.\-]\d{3,5}"
    r"|(?<![\w\-./])0[1-9](?:\d \d{7,8}|\d{2} \d{6,7}|\d{3} \d{6}))"
    r"(?!\d)"
)
_PII_NAMES = re.compile(r"e-?mail|phone|mobile|^tel$|telephone|^ph$|^em$", re.IGNORECASE)
_SECRET_NAMES = re.compile(
    r"^(?:key|token|access_token|auth|authorization|password|passwd|pwd|secret|signature|sig"
    r"|api_key|apikey|session|sessionid)$",
    re.IGNORECASE,
)
# A cheap first look over a whole URL query or custom_data's JSON: anything that could be
# an email, a phone, or a field named like one or like a secret.  Most events hold none
# and skip the walk; a hit only means "look closer" (the walk decides).  Substring tests
# and one digit-led pattern: a many-branch case-insensitive regex costs ~100 us here.
# custom_data: values that could be an email or a phone, keys named like one.
_SUSPECT_IN_DATA = ("@", "+", "mail", "phone", "mobil", "tel", '"ph"', '"em"')
# URL query strings: the same, plus parameters named like secrets.
_SUSPECT_IN_URL = (
    "@", "+", "mail", "phone", "mobil", "tel", "ph=", "em=", "key", "token", "auth",
    "passw", "pwd", "secret", "sig", "session",
)  # fmt: skip
# Every shape _PHONE finds but the "+" one (a substring test above), loosely.
# One leading \d for all three: alternatives each starting with \d cost twice the time.
_PHONE_SHAPE = re.compile(
    r"\d(?:\)?[\s.\-]\d{2,4}[\s.\-]\d{3}|\)\s?\d{2,4}[\s.\-]?\d{3}|\d{2,4} \d{6})"
)


def _suspect(text: str, words: tuple[str, ...]) -> bool:
    lower = text.lower()
    # A plain loop, not any() over a generator: this runs on every event's custom_data,
    # and the generator cost more than the substring tests themselves.
    for word in words:
        if word in lower:
            return True
    return _PHONE_SHAPE.search(text) is not None


_MIN_PHONE_DIGITS = 8
_MAX_PHONE_DIGITS = 15


def contains_pii(text: str) -> bool:
    """True when ``text`` holds an email address or is written like a phone number."""
    if "@" in text and _EMAIL.search(text):
        return True
    for match in _PHONE.finditer(text):
        digits = sum(char.isdigit() for char in match.group())
        if _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS:
            return True
    return False


def mask_pii(text: str) -> str:
    """``text`` with every email address and phone-shaped number (as :func:`contains_pii`
    sees them) replaced by ``[email]`` / ``[phone]``: for text from outside, such as
    Meta's error messages, before it is logged or stored."""
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    return _PHONE.sub(_mask_phone, text)


def _mask_phone(match: re.Match[str]) -> str:
    digits = sum(char.isdigit() for char in match.group())
    return "[phone]" if _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS else match.group()


def _flagged_parameter(name: str, value: str) -> bool:
    if _SECRET_NAMES.match(name) or _PII_NAMES.search(name):
        return bool(value)
    # parse_qsl has already percent-decoded name and value.
    return contains_pii(value) or contains_pii(name)


def scrub_url(url: str) -> tuple[str, bool]:
    """``url`` without its userinfo (``user:password@``), path segments holding an email
    address, flagged query parameters and a flagged fragment; and whether any was found.
    A URL whose host ``urlsplit`` refuses (``http://[::1/``) is split by hand
    (:func:`_split`) and cleaned by the same rules: the event keeps its URL."""
    parts = _split(url)
    netloc = parts.netloc
    path = parts.path
    flagged = False
    if "@" in netloc:
        netloc = netloc.rpartition("@")[2]
        flagged = True
    if "@" in path or "%40" in path:
        segments = path.split("/")
        kept_segments = [s for s in segments if not _EMAIL.search(unquote(s))]
        if len(kept_segments) != len(segments):
            path = "/".join(kept_segments)
            flagged = True
    query, fragment = parts.query, parts.fragment
    tail = query or fragment
    if tail and _suspect(unquote_plus(tail), _SUSPECT_IN_URL):
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(name, value) for name, value in pairs if not _flagged_parameter(name, value)]
        if len(kept) != len(pairs):
            query = urlencode(kept)
            flagged = True
        if fragment and contains_pii(unquote_plus(fragment)):
            fragment = ""
            flagged = True
    if not flagged:
        return url, False
    cleaned = parts._replace(netloc=netloc, path=path, query=query, fragment=fragment)
    return urlunsplit(cleaned), True


def _split(url: str) -> SplitResult:
    """``urlsplit(url)``; for a URL it refuses (a malformed host such as ``[::1``), the
    same parts split where it splits them: the first "#", then the first "?" before it,
    then the authority from "//" to the next "/"."""
    try:
        return urlsplit(url)
    except ValueError:
        pass
    rest, _, fragment = url.partition("#")
    rest, _, query = rest.partition("?")
    scheme, sep, after = rest.partition("://")
    if not sep:
        return SplitResult("", "", rest, query, fragment)
    netloc, slash, path = after.partition("/")
    return SplitResult(scheme, netloc, slash + path, query, fragment)


def _without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``, which no policy sends (``keep`` included)."""
    parts = _split(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _may_flag(url: str) -> bool:
    """Cheap: whether :func:`scrub_url` could find anything in ``url``."""
    return "?" in url or "#" in url or "@" in url or "%40" in url


def scrub_event(payload: dict[str, Any], policy: PIIPolicy) -> list[Problem]:
    """Apply ``policy`` to ``payload`` in place (see the module docstring); its problems."""
    if policy == "keep":
        for field in _URL_FIELDS:
            url = payload.get(field)
            if isinstance(url, str) and "@" in url:
                payload[field] = _without_userinfo(url)
        return []
    found: list[str] = []
    for field in _URL_FIELDS:
        url = payload.get(field)
        if isinstance(url, str) and _may_flag(url):
            cleaned, flagged = scrub_url(url)
            if flagged:
                found.append(field)
                if policy == "strip" and cleaned:
                    payload[field] = cleaned
                elif policy == "strip":
                    del payload[field]
    custom = payload.get("custom_data")
    if isinstance(custom, dict) and custom and _suspect_values(custom):
        in_custom = _scrub_values(custom, "custom_data", strip=False)
        if in_custom and policy == "strip":
            # A copy: the wire dict may share custom_data with the caller's input.
            payload["custom_data"] = custom = copy.deepcopy(custom)
            _scrub_values(custom, "custom_data", strip=True)
        found.extend(in_custom)
    if not found:
        return []
    if policy == "reject":
        return [
            error(
                "pii_in_event",
                field,
                f"{field} holds an email address, phone number or secret; Meta restricts "
                "pixels that receive personal data there: send identifiers in user_data "
                "(hashed) and drop them from URLs and custom_data",
            )
            for field in found
        ]
    return [
        warning(
            "pii_removed",
            field,
            f"{field} held an email address, phone number or secret, removed before "
            "storage; send identifiers in user_data instead (pii_in_urls policy: strip)",
        )
        for field in found
    ]


def _suspect_values(custom: dict[str, Any]) -> bool:
    try:
        text = orjson.dumps(custom).decode()
    except orjson.JSONEncodeError:
        return True  # the walk will tell (and ingest refuses what cannot be encoded)
    return _suspect(text, _SUSPECT_IN_DATA)


def _scrub_values(container: Any, path: str, *, strip: bool) -> list[str]:
    found: list[str] = []
    if isinstance(container, dict):
        for key in list(container):
            value = container[key]
            if contains_pii(str(key)):  # the key itself is personal data: never echo it
                found.append(path)
                if strip:
                    del container[key]
                continue
            where = f"{path}.{key}"[:200]
            if isinstance(value, str) and (
                contains_pii(value) or (_PII_NAMES.search(str(key)) and value)
            ):
                found.append(where)
                if strip:
                    del container[key]
            elif isinstance(value, _CONTAINER_TYPES):
                found.extend(_scrub_values(value, where, strip=strip))
    elif isinstance(container, list):
        for index in range(len(container) - 1, -1, -1):
            value = container[index]
            where = f"{path}[{index}]"
            if isinstance(value, str) and contains_pii(value):
                found.append(where)
                if strip:
                    del container[index]
            elif isinstance(value, _CONTAINER_TYPES):
                found.extend(_scrub_values(value, where, strip=strip))
    return found
