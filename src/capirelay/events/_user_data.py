"""``user_data``: who the customer is, and the one place their identifiers get hashed.

:class:`UserData` accepts readable names (``email``, ``phone`` ...) and Meta's
wire keys (``em``, ``ph`` ...) for the same field, each a string or a list of
strings, raw or already SHA-256 hashed.  :meth:`UserData.to_wire` turns it into
the wire dict: every customer-information key normalized and hashed through
:func:`capirelay.normalize.hash_field`, the browser and platform ids passed
through untouched.

Wire-form choices:

* The multi-value keys (``em ph fn ln db ge ct st zp country external_id``) are
  always emitted as a list, even for one value: Meta accepts string or list,
  and one shape keeps downstream code (dedup, validation, diffing) simple.
  Lists are de-duplicated after hashing, first occurrence wins, so
  ``["A@x.com", "a@x.com"]`` becomes one hash and the order stays stable.
* The single-value hashed keys (``f5first f5last fi dobd dobm doby``) are
  emitted as one string, as the SDK does.
* Blank values (``""``, whitespace) are dropped silently: they are absence,
  not an error, and hashing them would send SHA-256("") as a match key.
* A value that cannot be normalized is dropped on its own and reported as a
  warning :class:`~capirelay.problems.Problem`; the event still goes out with
  its other keys.  The problem never carries the raw value.
* ``fbc``, ``fbp``, IP, user agent and the platform ids are only stripped of
  surrounding whitespace, never lowercased: ``fbc``'s click id is
  case-sensitive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from capirelay.normalize import NormalizationError, hash_field, is_sha256
from capirelay.problems import Problem, warning

StrOrList = str | list[str]

# Readable attribute -> wire key for the keys Meta accepts as string or list.
MULTI_VALUE_KEYS: Final[tuple[tuple[str, str], ...]] = (
    ("country", "country"),
    ("email", "em"),
    ("phone", "ph"),
    ("first_name", "fn"),
    ("last_name", "ln"),
    ("date_of_birth", "db"),
    ("gender", "ge"),
    ("city", "ct"),
    ("state", "st"),
    ("zip_code", "zp"),
    ("external_id", "external_id"),
)
SINGLE_VALUE_HASHED_KEYS: Final[tuple[str, ...]] = (
    "f5first",
    "f5last",
    "fi",
    "dobd",
    "dobm",
    "doby",
)
UNHASHED_KEYS: Final[tuple[str, ...]] = (
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
# Keys whose normalization depends on the customer's country.
COUNTRY_HINTED_KEYS: Final[frozenset[str]] = frozenset({"ph", "st", "zp"})

# wire key -> (problem code suffix, what to send instead)
_FIXES: Final[dict[str, tuple[str, str]]] = {
    "em": ("email", "send a full email address such as name@example.com"),
    "ph": (
        "phone",
        "send the number with its country code (e.g. +1 650 555 0100), or give the event a "
        "country or a default_country so a national number can be completed",
    ),
    "fn": ("first_name", "send the first name as letters"),
    "ln": ("last_name", "send the last name as letters"),
    "db": ("date_of_birth", "send the date of birth as YYYYMMDD or YYYY-MM-DD"),
    "ge": ("gender", "send 'f' or 'm'"),
    "ct": ("city", "send the city name as letters"),
    "st": ("state", "send the two-letter state or province code, or its full name"),
    "zp": ("zip_code", "send the postal code of the customer's country"),
    "country": ("country", "send an ISO 3166-1 alpha-2 country code such as 'us'"),
    "external_id": ("external_id", "send a non-empty advertiser customer id"),
    "f5first": ("f5first", "send the first five letters of the first name"),
    "f5last": ("f5last", "send the first five letters of the last name"),
    "fi": ("first_initial", "send the first letter of the first name"),
    "dobd": ("birth_day", "send the day of birth as DD (01-31)"),
    "dobm": ("birth_month", "send the month of birth as MM (01-12)"),
    "doby": ("birth_year", "send the year of birth as YYYY"),
}


class _Redacted:
    def __repr__(self) -> str:
        return "<redacted>"


_REDACTED: Final = _Redacted()


def _either(readable: str, wire: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(readable, wire))


class UserData(BaseModel):
    """Customer information; readable names and wire keys are both accepted.

    Unknown keys are rejected (``extra="forbid"``) so a typo such as ``emial``
    fails validation naming the key instead of silently lowering match quality.
    Numbers are accepted where Meta wants strings (a phone or zip given as an
    int becomes its decimal string).  Neither ``repr()`` nor a validation
    error's text shows a value.
    """

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, hide_input_in_errors=True)

    email: StrOrList | None = _either("email", "em")
    phone: StrOrList | None = _either("phone", "ph")
    first_name: StrOrList | None = _either("first_name", "fn")
    last_name: StrOrList | None = _either("last_name", "ln")
    date_of_birth: StrOrList | None = _either("date_of_birth", "db")
    gender: StrOrList | None = _either("gender", "ge")
    city: StrOrList | None = _either("city", "ct")
    state: StrOrList | None = _either("state", "st")
    zip_code: StrOrList | None = _either("zip_code", "zp")
    country: StrOrList | None = None
    external_id: StrOrList | None = None

    f5first: str | None = None
    f5last: str | None = None
    fi: str | None = None
    dobd: str | None = None
    dobm: str | None = None
    doby: str | None = None

    client_ip_address: str | None = None
    client_user_agent: str | None = None
    fbc: str | None = None
    fbp: str | None = None
    subscription_id: str | None = None
    fb_login_id: int | str | None = None
    lead_id: int | str | None = None
    anon_id: str | None = None
    madid: str | None = None
    page_id: str | None = None
    page_scoped_user_id: str | None = None
    ctwa_clid: str | None = None
    ig_account_id: str | None = None
    ig_sid: str | None = None
    whatsapp_business_account_id: str | None = None

    def __repr_args__(self) -> Iterator[tuple[str, Any]]:
        """Which fields are set, never their values: a logged event must not leak PII."""
        for name, value in self.__dict__.items():
            if value is not None:
                yield name, _REDACTED

    def to_wire(
        self, default_country: str | None = None, problems: list[Problem] | None = None
    ) -> dict[str, Any]:
        """The wire ``user_data`` dict; unusable values are dropped into ``problems``.

        ``default_country`` is the hint for ``ph``/``st``/``zp`` when
        ``country`` is absent, already hashed or unusable.
        """
        sink: list[Problem] = [] if problems is None else problems
        out: dict[str, Any] = {}
        hint = default_country
        country = self.country
        if country is not None:
            hashes, hint = _hash_countries(_listed(country), default_country, sink)
            if hashes:
                out["country"] = hashes
        # One pass in declaration order: this runs once per event on the hot path.
        for attr, value in self.__dict__.items():
            if value is None:
                continue
            kind, key = _WIRE_PLAN[attr]
            if kind == _MULTI:
                region = hint if key in _HINTED else None
                if type(value) is str:  # the common case: skip the list machinery
                    hashed = _hash_one(key, value, region, sink)
                    if hashed is not None:
                        out[key] = [hashed]
                else:
                    hashes = _hash_all(key, value, region, sink)
                    if hashes:
                        out[key] = hashes
            elif kind == _SINGLE:
                hashed = _hash_one(key, value, None, sink)
                if hashed is not None:
                    out[key] = hashed
            elif kind == _PLAIN:
                if type(value) is str:
                    value = value.strip()
                    if not value:
                        continue
                out[key] = value
        return out


# How each attribute goes on the wire (plain ints: compared per field, per event).
_MULTI = 0  # hashed, emitted as a list
_SINGLE = 1  # hashed, emitted as one string
_PLAIN = 2  # never hashed
_DONE = 3  # handled before the pass (country)

_WIRE_PLAN: Final[dict[str, tuple[int, str]]] = {
    **{attr: (_MULTI, key) for attr, key in MULTI_VALUE_KEYS},
    "country": (_DONE, "country"),
    **{key: (_SINGLE, key) for key in SINGLE_VALUE_HASHED_KEYS},
    **{key: (_PLAIN, key) for key in UNHASHED_KEYS},
}
_HINTED: Final = COUNTRY_HINTED_KEYS


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _hash_all(
    key: str, values: list[str], country: str | None, problems: list[Problem]
) -> list[str]:
    hashes: list[str] = []
    for value in values:
        hashed = _hash_one(key, value, country, problems)
        if hashed is not None and hashed not in hashes:
            hashes.append(hashed)
    return hashes


def _hash_one(key: str, value: str, country: str | None, problems: list[Problem]) -> str | None:
    if not value or value.isspace():
        return None
    try:
        return hash_field(key, value, country=country)
    except NormalizationError as exc:
        problems.append(normalization_problem(key, exc.reason))
        return None


def _hash_countries(
    values: list[str], default_country: str | None, problems: list[Problem]
) -> tuple[list[str], str | None]:
    """Hash the countries; the first readable one that normalized is the hint for ph/st/zp.

    An already-hashed country cannot guide a phone number, and an invalid one
    must not, so those fall back to ``default_country``.
    """
    hashes: list[str] = []
    hint: str | None = None
    for value in values:
        hashed = _hash_one("country", value, None, problems)
        if hashed is None:
            continue
        if hint is None and not is_sha256(value.strip().lower()):
            hint = value
        if hashed not in hashes:
            hashes.append(hashed)
    return hashes, hint if hint is not None else default_country


def normalization_problem(key: str, reason: str) -> Problem:
    """A warning for one dropped ``user_data`` value; ``reason`` holds no raw value."""
    name, fix = _FIXES[key]
    return warning(
        f"invalid_{name}",
        f"user_data.{key}",
        f"user_data.{key} could not be normalized ({reason}) and was dropped; {fix}.",
    )
