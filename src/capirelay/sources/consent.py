"""Consent and Limited Data Use (LDU), applied at ingest from a pixel's :class:`ConsentPolicy`.

Two decisions, both made before an event is hashed or stored:

* **Send or drop** (browser beacons only, :func:`drop_reason`).  A beacon
  whose consent flag is ``false`` (or a Consent Mode object with
  ``ad_storage``/``ad_user_data`` denied) is dropped.  With
  ``require_consent`` a beacon must carry an explicit grant, and a browser
  sending ``Sec-GPC: 1`` (when ``honor_gpc``) counts as a refusal.  Dropped
  events are counted (``dropped{reason="no_consent"}``), never queued.
* **Limited Data Use** (:func:`apply_ldu`, both routes).  Meta's documented
  encoding (Server Event parameters): ``data_processing_options=["LDU"]``
  with ``data_processing_options_country`` ``1`` = USA or ``0`` = let Meta
  geolocate, and ``data_processing_options_state`` ``1000`` = California or
  ``0`` = geolocate ("if you set a country, you must also set a state").
  Meta documents no other codes, so any other place is sent as ``0`` and
  Meta geolocates it.  LDU is set when ``ldu_all``, when the event's country
  is in ``ldu_countries`` or its US state in ``ldu_states``, when the browser
  sent GPC and ``honor_gpc`` (beacons), and, conservatively, when LDU
  geography is configured but the event's place cannot be told (``0``/``0``:
  Meta applies LDU only where its rules do).  An event whose caller already
  chose LDU keeps the caller's codes; a caller's ``[]`` never overrides the
  policy.

The place is read from the event's ``user_data`` (``country``,
``st``/``state``) with the pixel's ``default_country`` as the fallback when the
event carries no country, normalized with the same rules as the hashing so
``"California"`` and ``"CA"`` agree.  Already-hashed values (as Meta asks
senders to send them) are recognised by comparing them with the SHA-256 of
every ISO 3166-1 alpha-2 country code and every US state code, computed once;
a hashed value that matches none of them is an unknown place (a hashed country
does not fall back to ``default_country``: the event named a country, just
not one that can be told).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from capirelay.config import ConsentPolicy
from capirelay.normalize import (
    NormalizationError,
    country_codes,
    digest_of,
    is_hashed,
    normalize,
    sha256_hex,
    us_state_codes,
)

__all__ = [
    "CONSENT_SIGNALS",
    "GEOLOCATE",
    "LDU",
    "US_COUNTRY_CODE",
    "US_STATE_CODES",
    "ConsentFlagError",
    "apply_ldu",
    "drop_reason",
    "gpc_requested",
    "ldu_active",
    "ldu_codes",
    "parse_consent_flag",
]

LDU = "LDU"
GEOLOCATE = 0
US_COUNTRY_CODE = 1
# Meta's documented state codes; any other state is sent as GEOLOCATE.
US_STATE_CODES: Mapping[str, int] = {"ca": 1000}
CONSENT_SIGNALS = ("ad_storage", "ad_user_data")
NO_CONSENT = "no_consent"
_GRANTED = "granted"
_SIGNAL_VALUES = (_GRANTED, "denied")


class ConsentFlagError(ValueError):
    """The beacon's ``consent`` field has a shape the gateway does not understand."""


def parse_consent_flag(value: Any) -> bool | None:
    """``None`` when absent; else whether the page reports a grant.

    Accepts ``true``/``false`` or a Consent Mode-style object whose
    ``ad_storage``/``ad_user_data`` are ``"granted"``/``"denied"`` (a missing
    signal counts as granted: the page reported only what it manages).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        for signal, state in value.items():
            if signal not in CONSENT_SIGNALS or state not in _SIGNAL_VALUES:
                raise ConsentFlagError(
                    "consent must be true/false or an object with ad_storage / ad_user_data "
                    "set to 'granted' or 'denied'"
                )
        return all(value.get(signal, _GRANTED) == _GRANTED for signal in CONSENT_SIGNALS)
    raise ConsentFlagError('consent must be true/false or {"ad_storage": "granted"|"denied"}')


def gpc_requested(headers: Mapping[str, str]) -> bool:
    """Whether the browser sent Global Privacy Control (``Sec-GPC: 1``)."""
    return headers.get("sec-gpc", "").strip() == "1"


def drop_reason(consented: bool | None, *, gpc: bool, policy: ConsentPolicy) -> str | None:
    """Why a beacon must not be sent for consent reasons, or ``None`` to send it."""
    if consented is False:
        return NO_CONSENT
    if policy.require_consent and (consented is None or (gpc and policy.honor_gpc)):
        return NO_CONSENT
    return None


def ldu_active(policy: ConsentPolicy) -> bool:
    """Whether the policy can set LDU without a GPC signal (lets callers skip the work)."""
    return policy.ldu_all or bool(policy.ldu_countries) or bool(policy.ldu_states)


@dataclass(frozen=True, slots=True)
class _Rules:
    everywhere: bool
    countries: frozenset[str]
    states: frozenset[str]

    @property
    def by_place(self) -> bool:
        return bool(self.countries or self.states)


@lru_cache(maxsize=64)
def _rules(everywhere: bool, countries: tuple[str, ...], states: tuple[str, ...]) -> _Rules:
    return _Rules(
        everywhere,
        frozenset(_place("country", c, None) or c.strip().lower() for c in countries),
        frozenset(_place("st", s, "us") or s.strip().lower() for s in states),
    )


@cache
def _hashed_places() -> dict[str, Mapping[str, str]]:
    """SHA-256 hex of each known code -> the code, per wire key (built on first use)."""
    countries = {sha256_hex(code): code for code in country_codes()}
    states = {sha256_hex(code): code for code in us_state_codes()}
    return {"country": countries, "st": states}


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _place(key: str, value: Any, country: str | None) -> str | None:
    """The normalized country/state, or ``None`` when it is absent, unusable or a hash
    of no known code (a hashed US state is recognised whatever ``country`` says)."""
    value = _first(value)
    if not isinstance(value, str) or not value.strip():
        return None
    if is_hashed(value):
        return _hashed_places()[key].get(digest_of(value.strip()))
    try:
        return normalize(key, value, country=country)
    except NormalizationError:
        return None


def _location(user_data: Any, default_country: str | None) -> tuple[str | None, str | None]:
    if not isinstance(user_data, Mapping):
        return _place("country", default_country, None), None
    sent = _first(user_data.get("country"))
    country = _place("country", sent, None)
    if country is None and not (isinstance(sent, str) and is_hashed(sent)):
        country = _place("country", default_country, None)
    state_value = user_data.get("st", user_data.get("state"))
    return country, _place("st", state_value, country)


def ldu_codes(country: str | None, state: str | None) -> tuple[int, int]:
    """Meta's ``(country, state)`` codes for a place; unknown parts are left to Meta."""
    if country not in (None, "us"):
        return GEOLOCATE, GEOLOCATE
    state_code = US_STATE_CODES.get(state or "", GEOLOCATE)
    if country is None and state_code == GEOLOCATE:
        return GEOLOCATE, GEOLOCATE
    return US_COUNTRY_CODE, state_code


def _wants_ldu(rules: _Rules, country: str | None, state: str | None) -> bool:
    if rules.everywhere:
        return True
    if not rules.by_place:
        return False
    if country is None and state is None:
        return True  # place unknown: LDU with geolocation rather than a guess
    if country in rules.countries or (state in rules.states and country in (None, "us")):
        return True
    # A US event whose state is unknown may still be in a listed state.
    return bool(rules.states) and country == "us" and state is None


def _caller_chose_ldu(event: Mapping[str, Any]) -> bool:
    options = event.get("data_processing_options")
    return isinstance(options, list) and LDU in options


def apply_ldu(
    event: dict[str, Any],
    policy: ConsentPolicy,
    *,
    default_country: str | None,
    gpc: bool = False,
) -> dict[str, Any]:
    """``event`` with the policy's LDU fields set, or ``event`` itself when none apply.

    ``event`` is a raw (not yet hashed) CAPI-shaped event; the input is never
    modified, a changed event is a shallow copy.
    """
    forced = gpc and policy.honor_gpc
    if not (forced or ldu_active(policy)) or _caller_chose_ldu(event):
        return event
    rules = _rules(policy.ldu_all, tuple(policy.ldu_countries), tuple(policy.ldu_states))
    country, state = _location(event.get("user_data"), default_country)
    if not (forced or _wants_ldu(rules, country, state)):
        return event
    country_code, state_code = ldu_codes(country, state)
    return {
        **event,
        "data_processing_options": [LDU],
        "data_processing_options_country": country_code,
        "data_processing_options_state": state_code,
    }
