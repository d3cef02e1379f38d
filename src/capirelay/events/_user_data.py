"""``user_data``: who the customer is, and the one place their identifiers get hashed.

:class:`UserData` accepts readable names (``email``, ``phone`` ...) and Meta's
wire keys (``em``, ``ph`` ...) for the same field, each a string or a list of
strings, raw or already SHA-256 hashed.  :meth:`UserData.to_wire` turns it into
the wire dict: every customer-information key normalized and hashed through
:func:`capirelay.normalize.hash_wire_key`, the browser and platform ids passed
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
  its other keys.  The problem never carries the raw value.  Values of one key
  dropped for one reason are one warning that counts them (``3 values of
  user_data.em could not be normalized (...)``, ``Problem.count`` 3), in the
  order the first of each was met.
* ``fbc``, ``fbp``, IP, user agent and the platform ids are only stripped of
  surrounding whitespace, never lowercased: ``fbc``'s click id is
  case-sensitive.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import phonenumbers
import pycountry
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from capirelay.events._ids import IdOrList, NumberOrIdText
from capirelay.meta_facts import SINGLE_VALUE_HASHED_KEYS, UNHASHED_USER_DATA_KEYS
from capirelay.normalize import NormalizationError, hash_wire_key, is_hashed, resolve_country
from capirelay.problems import Problem, error, warning

StrOrList = str | list[str]

# Readable attribute -> wire key for the keys Meta accepts as string or list
# (capirelay.meta_facts.MULTI_VALUE_HASHED_KEYS, readable names ours).
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
    external_id: IdOrList | None = None

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
    fb_login_id: NumberOrIdText | None = None
    lead_id: NumberOrIdText | None = None
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
        return wire_user_data(self.__dict__, model_plan(), self.country, default_country, sink)


# One step of turning a user_data mapping into its wire dict:
# (key in the mapping, how it goes on the wire, wire key).
PlanStep = tuple[str, int, str]
# The steps split by kind, each part in wire order: (key in the mapping, wire key) for the
# list-valued hashed keys, the same for the single-value hashed keys, then the plain keys
# (whose key in the mapping is their wire key).  Declaration order puts every kind's
# keys after the previous kind's, so emitting the parts one after another keeps wire order.
UserDataPlan = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[str, ...]]


def split_plan(steps: Sequence[PlanStep]) -> UserDataPlan:
    """``steps`` (in declaration order, ``country`` excluded) as a :data:`UserDataPlan`."""
    kinds = [kind for _, kind, _ in steps]
    if kinds != sorted(kinds):
        raise ValueError("user_data plan steps must come in declaration order")
    return (
        tuple((name, key) for name, kind, key in steps if kind == _MULTI),
        tuple((name, key) for name, kind, key in steps if kind == _SINGLE),
        tuple(name for name, kind, _ in steps if kind == _PLAIN),
    )


def wire_user_data(
    values: Mapping[str, Any],
    plan: UserDataPlan,
    country: str | list[str] | None,
    default_country: str | None,
    problems: list[Problem],
) -> dict[str, Any]:
    """The wire ``user_data`` dict from validated values, following ``plan``.

    ``plan`` names the keys of ``values`` to emit (see :data:`UserDataPlan`),
    ``country`` excluded: it is passed separately and hashed first because
    its first readable value is the hint for ``ph``/``st``/``zp``.  Shared by
    :meth:`UserData.to_wire` and the model-free ingest path, so the two
    cannot drift apart.  The values it drops go into ``problems`` as
    :func:`dropped_problems` tells them: once per key and reason, counted.
    """
    out: dict[str, Any] = {}
    # (wire key, reason) of each value dropped, told once the event's keys are all done.
    dropped: list[tuple[str, str]] = []
    hint = default_country
    if type(country) is str and len(country) == 2 and not country.isspace():
        # The common case, one ISO code: never a hash, so it is its own hint if it is valid.
        try:
            out["country"] = [hash_wire_key("country", country)]
            hint = country
        except NormalizationError as exc:
            dropped.append(("country", exc.reason))
    elif country is not None:
        hashes, hint = _hash_countries(_listed(country), default_country, dropped)
        if hashes:
            out["country"] = hashes
    # Resolved once per event: every hinted key then hashes against the same region.
    region = resolve_country(hint) if hint is not None else None
    multi, single, plain = plan
    # Three flat loops with calls inlined: they run for every key of every event.
    for name, key in multi:
        value = values[name]
        if type(value) is str:
            if value and not value.isspace():
                try:
                    out[key] = [hash_wire_key(key, value, region)]
                except NormalizationError as exc:
                    dropped.append((key, exc.reason))
        elif value is not None:
            hashes = _hash_all(key, value, region, dropped)
            if hashes:
                out[key] = hashes
    for name, key in single:
        value = values[name]
        if value is not None:
            hashed = _hash_one(key, value, None, dropped)
            if hashed is not None:
                out[key] = hashed
    for name in plain:
        value = values[name]
        if type(value) is str:
            value = value.strip()
            if value:
                out[name] = value
        elif value is not None:
            out[name] = value
    if dropped:
        problems.extend(dropped_problems(dropped))
    if region is None and "ph" in out:
        doubt = _phone_country_code_warning(values, multi)
        if doubt is not None:
            problems.append(doubt)
    return out


# Meta requires the country code in ph.  Without a country to complete a national number
# the digits are sent as given (they may still match), and the sender is told how to fix it.
PHONE_WITHOUT_COUNTRY_CODE: Final = warning(
    "phone_without_country_code",
    "user_data.ph",
    "user_data.ph looks like a number without its country code (e.g. a US number without "
    "its 1) and the event has no country to add one, so it was sent as given and may not "
    "match; send the phone with its country code (+1 ... for the US) or set the event's "
    "country / pixel default_country.",
)


@functools.lru_cache(maxsize=64)
def _phone_reads_two_ways(countries: tuple[str, ...]) -> Problem:
    """The ``phone_without_country_code`` warning for ten digits that read both as a US number
    without its 1 and as another country's number with its code (``countries``: "+47
    (Norway)"), which is how they were hashed.  Names the country code, never the number."""
    return warning(
        "phone_without_country_code",
        "user_data.ph",
        "user_data.ph reads two ways and the event has no country to tell which: as a number "
        f"written with its country code, {' or '.join(countries)}, which is how it was hashed "
        "and sent, or as a US number without its 1, which would not match. If it is a US "
        "number, send it with its country code (+1 ...); set the event's country or the "
        "pixel's default_country to stop the guessing.",
    )


def _phone_country_code_warning(
    values: Mapping[str, Any], multi: Sequence[tuple[str, str]]
) -> Problem | None:
    for name, key in multi:
        if key == "ph":
            phones = values[name]
            listed = [phones] if type(phones) is str else phones or []
            doubts = [missing_country_code(p) for p in listed if type(p) is str]
            found = [d for d in doubts if d is not None]
            if not found:
                return None
            if any(d.as_written is None for d in found):
                return PHONE_WITHOUT_COUNTRY_CODE
            return _phone_reads_two_ways(tuple(dict.fromkeys(d.country_code() for d in found)))
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class MissingCountryCode:
    """A phone that looks written without its country code (:func:`missing_country_code`).

    ``as_written`` is set when its digits also form a valid number read with a country
    code, which is how they are hashed without a country: ten digits such as
    ``4798570523`` are the US number (479) 857-0523 without its 1 *or* Norway's
    +47 98 57 05 23 written without the ``+``.  It is ``None`` when the digits read only
    as a national number (``6505551212``, ``020 7946 0958``).
    """

    as_written: phonenumbers.PhoneNumber | None = None

    def country(self) -> str | None:
        """The country of ``as_written`` (``Norway``), when it has one."""
        if self.as_written is None:
            return None
        found = pycountry.countries.get(
            alpha_2=phonenumbers.region_code_for_number(self.as_written) or ""
        )
        return str(getattr(found, "common_name", None) or found.name) if found else None

    def country_code(self) -> str:
        """``+47 (Norway)``: the country code ``as_written`` starts with, and its country."""
        if self.as_written is None:
            return ""
        code = f"+{self.as_written.country_code}"
        name = self.country()
        return f"{code} ({name})" if name else code


def missing_country_code(phone: str) -> MissingCountryCode | None:
    """Why ``phone`` looks written without its country code, or ``None`` when it does not
    (hashed, or written with its code): the test behind ingest's
    ``phone_without_country_code`` warning and ``capirelay hash ph``'s, asked only when no
    country is known.

    Written internationally means a leading ``+``/``00``, or digits that already form a
    valid number when read with a country code (``16505551212``), unless they are ten
    digits that also form a valid US number: ``(479) 857-0523`` reads as +47 98570523 in
    Norway, as one in nine US numbers read as some country's, and for many countries'
    numbers written with their code but no ``+`` (``3212345678``, Belgium's
    +32 12 34 56 78) the reverse holds.  Nothing tells the two apart, so such a phone is a
    :class:`MissingCountryCode` that carries both readings.  Validity is only a hint
    here, so ageing allocation metadata can at worst add a warning.
    """
    text = phone.strip()
    if not text or (len(text) >= _SHA256_LENGTH and is_hashed(text)):
        return None
    if text.lstrip("( ").startswith("+") or text.startswith("00"):
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return MissingCountryCode()
    if not phonenumbers.is_valid_number(number):
        return MissingCountryCode()
    return MissingCountryCode(number) if _valid_us_national(digits) else None


def _valid_us_national(digits: str) -> bool:
    """True for ten digits that are a valid US number read without its country code."""
    if len(digits) != 10:
        return False
    try:
        number = phonenumbers.parse(digits, "US")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


# How each attribute goes on the wire (plain ints: compared per field, per event).
_MULTI = 0  # hashed, emitted as a list
_SINGLE = 1  # hashed, emitted as one string
_PLAIN = 2  # never hashed
_DONE = 3  # handled before the pass (country)

_WIRE_PLAN: Final[dict[str, tuple[int, str]]] = {
    **{attr: (_MULTI, key) for attr, key in MULTI_VALUE_KEYS},
    "country": (_DONE, "country"),
    **{key: (_SINGLE, key) for key in SINGLE_VALUE_HASHED_KEYS},
    **{key: (_PLAIN, key) for key in UNHASHED_USER_DATA_KEYS},
}


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _hash_all(
    key: str, values: list[str], region: str | None, dropped: list[tuple[str, str]]
) -> list[str]:
    hashes: list[str] = []
    for value in values:
        hashed = _hash_one(key, value, region, dropped)
        if hashed is not None and hashed not in hashes:
            hashes.append(hashed)
    return hashes


def _hash_one(
    key: str, value: str, region: str | None, dropped: list[tuple[str, str]]
) -> str | None:
    """The value's hash, or ``None`` when it is blank or (``dropped`` says why) unusable."""
    if not value or value.isspace():
        return None
    try:
        return hash_wire_key(key, value, region)
    except NormalizationError as exc:
        dropped.append((key, exc.reason))
        return None


_SHA256_LENGTH: Final = 64


def _hash_countries(
    values: list[str], default_country: str | None, dropped: list[tuple[str, str]]
) -> tuple[list[str], str | None]:
    """Hash the countries; the first readable one that normalized is the hint for ph/st/zp.

    An already-hashed country cannot guide a phone number, and an invalid one
    must not, so those fall back to ``default_country``.
    """
    hashes: list[str] = []
    hint: str | None = None
    for value in values:
        hashed = _hash_one("country", value, None, dropped)
        if hashed is None:
            continue
        # A SHA-256 digest is 64 characters, so shorter text skips the regex.
        if hint is None and not (len(value) >= _SHA256_LENGTH and is_hashed(value)):
            hint = value
        if hashed not in hashes:
            hashes.append(hashed)
    return hashes, hint if hint is not None else default_country


def normalization_problem(key: str, reason: str, count: int = 1) -> Problem:
    """The warning for ``count`` values of ``user_data.<key>`` dropped for one ``reason``,
    which holds no raw value."""
    head, tail = _dropped_sentence(key, count)
    return warning(
        f"invalid_{_FIXES[key][0]}", f"user_data.{key}", f"{head}{reason}{tail}", count=count
    )


def dropped_problems(dropped: Sequence[tuple[str, str]]) -> list[Problem]:
    """One :func:`normalization_problem` per distinct (wire key, reason) of ``dropped``, in
    the order each was first met, counting the values it covers.

    Three e-mails without an '@' are one warning for three values, not the same
    sentence three times; values of one key dropped for different reasons, or of
    different keys, stay apart.
    """
    return [normalization_problem(key, reason, n) for (key, reason), n in Counter(dropped).items()]


def _dropped_sentence(key: str, count: int) -> tuple[str, str]:
    """What a :func:`normalization_problem` message says before and after its reason."""
    fix = _FIXES[key][1]
    if count == 1:
        return f"user_data.{key} could not be normalized (", f") and was dropped; {fix}."
    return (
        f"{count} values of user_data.{key} could not be normalized (",
        f") and were dropped; {fix}.",
    )


# The codes of normalization_problem's warnings: a user_data value given and dropped.
_DROPPED_CODES: Final = frozenset(f"invalid_{name}" for name, _ in _FIXES.values())
# capirelay.validate's errors on a user_data that is missing (the wire leaves out an emptied
# user_data), empty, or too thin to match on.
_EMPTY_USER_DATA_CODES: Final = frozenset({"missing_field", "missing_user_data"})
_THIN_USER_DATA_CODE: Final = "insufficient_customer_info"


def explain_dropped_user_data(
    problems: list[Problem], *, keep_dropped: bool = True
) -> list[Problem]:
    """``problems`` with the errors that find ``user_data`` missing, empty or too thin told
    again with the values normalization dropped from it: each field once, how many of its
    values, why and the fix.

    An event whose only e-mail could not be normalized reaches validation without
    ``user_data``; "user_data is required" would send its sender looking for a field
    they did send.  The error keeps its code and field (what Meta would refuse), and
    ``problems`` comes back as is when nothing was dropped.  The error stands alone (a
    webhook's rejection receipt keeps only errors), so it repeats what the drop warnings
    say, once per field; ``keep_dropped=False`` leaves those warnings out when an error
    told them (``capirelay send`` prints both on one screen).  Ingest and ``capirelay
    send`` both pass their wire and rule problems through here.
    """
    dropped = [p for p in problems if p.code in _DROPPED_CODES and p.field.startswith("user_data.")]
    if not dropped:
        return problems
    head, details, several = _dropped_summary(dropped)
    out: list[Problem] = []
    told = False
    for problem in problems:
        if problem.is_error and problem.field == "user_data":
            if problem.code in _EMPTY_USER_DATA_CODES:
                told = True
                problem = error(
                    problem.code,
                    "user_data",
                    f"user_data was given but none of its values could be used: {head}. "
                    f"Fix {'them' if several else 'it'}, or add another customer information "
                    "parameter (em, ph, external_id, client_ip_address with "
                    f"client_user_agent, fbc, fbp...). {details}",
                )
            elif problem.code == _THIN_USER_DATA_CODE:
                told = True
                problem = error(
                    problem.code,
                    "user_data",
                    f"{problem.message}, or fix what was dropped from it: {head}. {details}",
                )
        out.append(problem)
    if told and not keep_dropped:
        out = [p for p in out if p not in dropped]
    return out


def _dropped_summary(dropped: list[Problem]) -> tuple[str, str, bool]:
    """What was dropped, compactly: the fields, each once with how many of its values
    (``user_data.em (3 values) and user_data.ph could not be normalized and were
    dropped``); then each field's distinct reasons and its fix, once; and whether more
    than one value was dropped.  The fields come first: a receipt keeps 500 characters."""
    reasons: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for problem in dropped:
        key = problem.field.removeprefix("user_data.")
        counts[key] = counts.get(key, 0) + problem.count
        reason = _dropped_reason(key, problem.message, problem.count)
        listed = reasons.setdefault(key, [])
        if reason is not None and reason not in listed:
            listed.append(reason)
    names = [f"user_data.{key}" + (f" ({n} values)" if n > 1 else "") for key, n in counts.items()]
    several = sum(counts.values()) > 1
    named = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    head = f"{named} could not be normalized and {'were' if several else 'was'} dropped"
    details = " ".join(
        f"user_data.{key}: {'; '.join([*reasons[key], _FIXES[key][1]])}." for key in counts
    )
    return head, details, several


def _dropped_reason(key: str, message: str, count: int) -> str | None:
    """The reason in a :func:`normalization_problem` message, which names no value."""
    if key not in _FIXES:
        return None
    head, tail = _dropped_sentence(key, count)
    if not (message.startswith(head) and message.endswith(tail)):
        return None
    return message[len(head) : -len(tail)]


@functools.cache
def model_plan() -> UserDataPlan:
    """Every :class:`UserData` attribute but ``country``, in declaration (wire) order."""
    return split_plan(
        [
            (attr, *_WIRE_PLAN[attr])
            for attr in UserData.model_fields
            if _WIRE_PLAN[attr][0] != _DONE
        ]
    )
