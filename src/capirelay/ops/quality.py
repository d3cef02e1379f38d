"""Predicted match quality: which customer-information keys wire events carry, and a score.

Meta grades a dataset's Event Match Quality (EMQ, "scored from 1 to 10") only
after the fact, in Events Manager or through the Dataset Quality API, and never
publishes how it weighs each key.  This module owns the question a gateway can
answer *before* sending: for a sample of wire events (normalized and hashed,
exactly as they go to Meta), per event name, what share carries each match key
in a form Meta can use, what share of ``fbc``/``fbp`` values are malformed, a
predicted score on the same 0-10 scale, and hints ordered by what fixing them
is expected to gain.

A key counts as *covered* only when it is present **and valid**: a 64-hex
SHA-256 for the hashed keys (``em ph fn ln db ct st zp country``), Meta's
``fb.{index}.{ms}.{id}`` grammar for ``fbc``/``fbp``
(:func:`capirelay.browser_ids.parse_fbc`), an IPv4/IPv6 literal for
``client_ip_address``, any non-empty string for ``client_user_agent`` and
``external_id`` (Meta recommends hashing ``external_id`` but accepts it raw).

Score weights (a documented guess; Meta publishes none; the numbers live in
:data:`capirelay.meta_facts.MATCH_KEY_WEIGHTS`, shared with the emulator's
Dataset Quality answer).  They sum to 10, so an event that carries every key
scores 10, and they follow the reference §5:

========================  ======  ==================================================
key                       weight  why
========================  ======  ==================================================
``em``                    2.5     "high-quality" key; Meta's own ACR example puts
                                  email first (+59 % median)
``ph``                    1.5     "high-quality" key
``client_ip_address``     1.0     "high-quality" key (+21 % in the same example)
``client_user_agent``     0.5     required for website events; weak alone
ip + user agent together  0.5     "Sending both ... may help improve event matching"
``fn`` + ``ln`` (both)    1.0     "high-quality" only as a pair; one name alone is
                                  a baseline-rule reject (``fn+ge``)
``fbc``                   1.0     the click ID ties the event to an ad click; Meta
                                  asks for it "with every event"
``fbp``                   0.75    browser ID, also the dedup fallback key
``external_id``           0.75    Best Practices: include it "for all events"
``db``                    0.25    weak alone (``db+client_user_agent`` is a
                                  baseline-rule reject)
``ct st zp country``      0.0625  each; location only narrows a match
========================  ======  ==================================================

An event's score is the sum of the weights of its covered keys; an event
name's score is the mean over its events.  Meta recommends aiming for 6.0 or
higher (:data:`GOOD_SCORE`).

A sale in a store (``action_source`` ``physical_store``) has no browser: no user
agent, no ``fbp``/``fbc`` cookie and no client IP address of the buyer.  Meta matches
offline events on customer information (the reference's Offline Events page) and
requires ``client_user_agent`` only of website events, so no hint asks such events
for those keys (:data:`BROWSER_KEYS`); their score still counts only what they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from capirelay.browser_ids import parse_fbc, parse_fbp
from capirelay.meta_facts import IP_UA_PAIR_BONUS
from capirelay.meta_facts import MATCH_KEY_WEIGHTS as W
from capirelay.normalize import is_hashed

__all__ = [
    "BROWSER_KEYS",
    "GOOD_SCORE",
    "HINT_MIN_SHARE",
    "MATCH_KEYS",
    "MAX_HINTS",
    "OVERALL",
    "EventQuality",
    "MatchKey",
    "QualityReport",
    "predict_match_quality",
]

GOOD_SCORE = 6.0  # Meta: "aim for an Event Match Quality score of 6.0 or higher"
# Keys only a browser gives: never asked of an in-store sale (OFFLINE_SOURCES).
BROWSER_KEYS = frozenset({"client_user_agent", "client_ip_address", "fbc", "fbp"})
OFFLINE_SOURCES = frozenset({"physical_store"})
HINT_MIN_SHARE = 0.05  # below 5 % a gap is noise, not advice
MAX_HINTS = 8
OVERALL = "(all events)"
UNNAMED = "(no event_name)"


def _any_value(value: Any, valid: Callable[[str], bool]) -> bool:
    """True when ``value`` (a string or a list of strings) holds at least one valid string."""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and v != "" and valid(v) for v in values)


def _is_present(value: Any) -> bool:
    return _any_value(value, lambda _v: True)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_nonblank(text: str) -> bool:
    return bool(text.strip())


@dataclass(frozen=True, slots=True)
class MatchKey:
    """One row of the coverage table: which ``user_data`` fields it needs and how to judge them.

    ``fields`` has two entries only for ``fn+ln``: both must be covered.
    ``noun`` completes "N% of Purchase events lack ...".
    """

    name: str
    fields: tuple[str, ...]
    weight: float
    noun: str
    valid: Callable[[str], bool]
    bad_value: str  # completes "N% of Purchase <name> values are ..."


MATCH_KEYS: tuple[MatchKey, ...] = (
    MatchKey("em", ("em",), W["em"], "an email", is_hashed, "not SHA-256 hashes"),
    MatchKey("ph", ("ph",), W["ph"], "a phone", is_hashed, "not SHA-256 hashes"),
    MatchKey(
        "fn+ln",
        ("fn", "ln"),
        W["fn"] + W["ln"],
        "a first and last name",
        is_hashed,
        "not SHA-256 hashes",
    ),
    MatchKey("db", ("db",), W["db"], "a date of birth", is_hashed, "not SHA-256 hashes"),
    MatchKey("ct", ("ct",), W["ct"], "a city", is_hashed, "not SHA-256 hashes"),
    MatchKey("st", ("st",), W["st"], "a state", is_hashed, "not SHA-256 hashes"),
    MatchKey("zp", ("zp",), W["zp"], "a zip code", is_hashed, "not SHA-256 hashes"),
    MatchKey("country", ("country",), W["country"], "a country", is_hashed, "not SHA-256 hashes"),
    MatchKey(
        "external_id", ("external_id",), W["external_id"], "an external_id", _is_nonblank, "blank"
    ),
    MatchKey(
        "client_ip_address",
        ("client_ip_address",),
        W["client_ip_address"],
        "a client IP address",
        _is_ip,
        "not IP addresses",
    ),
    MatchKey(
        "client_user_agent",
        ("client_user_agent",),
        W["client_user_agent"],
        "a user agent",
        _is_nonblank,
        "blank",
    ),
    MatchKey(
        "fbc",
        ("fbc",),
        W["fbc"],
        "an fbc (click ID)",
        lambda v: parse_fbc(v) is not None,
        "malformed",
    ),
    MatchKey(
        "fbp",
        ("fbp",),
        W["fbp"],
        "an fbp (browser ID)",
        lambda v: parse_fbp(v) is not None,
        "malformed",
    ),
)
_KEYS_BY_NAME = {key.name: key for key in MATCH_KEYS}
_IP_UA = ("client_ip_address", "client_user_agent")


@dataclass(slots=True)
class EventQuality:
    """Coverage and predicted score of one event name (or of all events: :data:`OVERALL`).

    ``coverage[key]``: share of events where the key is present and valid;
    ``present[key]``: share where it is present at all; ``malformed[key]`` (``fbc``
    and ``fbp`` only): share of the present values that do not parse.
    """

    event_name: str
    count: int
    coverage: dict[str, float]
    present: dict[str, float]
    malformed: dict[str, float]
    score: float
    hints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_name": self.event_name,
            "count": self.count,
            "coverage": self.coverage,
            "present": self.present,
            "malformed": self.malformed,
            "score": self.score,
            "hints": self.hints,
        }


@dataclass(slots=True)
class QualityReport:
    """Per event name (``by_event``), all events together (``overall``), and the top ``hints``."""

    by_event: dict[str, EventQuality]
    overall: EventQuality
    hints: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_event": {name: q.to_dict() for name, q in self.by_event.items()},
            "overall": self.overall.to_dict(),
            "hints": self.hints,
        }


@dataclass(slots=True)
class _Tally:
    """Running counts for one event name.

    ``lacking[key]``: events without the key that could have had it (an in-store sale
    cannot have a browser's keys), what the hints are made of."""

    count: int = 0
    score_sum: float = 0.0
    covered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KEYS_BY_NAME, 0))
    present: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KEYS_BY_NAME, 0))
    lacking: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KEYS_BY_NAME, 0))

    def add(self, user_data: Mapping[str, Any], *, offline: bool = False) -> None:
        self.count += 1
        covered_keys: set[str] = set()
        for key in MATCH_KEYS:
            values = [user_data.get(f) for f in key.fields]
            if all(_is_present(v) for v in values):
                self.present[key.name] += 1
                if all(_any_value(v, key.valid) for v in values):
                    self.covered[key.name] += 1
                    covered_keys.add(key.name)
            elif not (offline and key.name in BROWSER_KEYS):
                self.lacking[key.name] += 1
        self.score_sum += _event_score(covered_keys)


def _event_score(covered_keys: set[str]) -> float:
    score = sum(_KEYS_BY_NAME[name].weight for name in covered_keys)
    if all(name in covered_keys for name in _IP_UA):
        score += IP_UA_PAIR_BONUS
    return min(score, 10.0)


def predict_match_quality(payloads: Iterable[Mapping[str, Any]]) -> QualityReport:
    """Coverage, predicted score and hints for wire events (normalized and hashed dicts)."""
    tallies: dict[str, _Tally] = {}
    overall = _Tally()
    for payload in payloads:
        user_data = payload.get("user_data")
        if not isinstance(user_data, Mapping):
            user_data = {}
        name = payload.get("event_name")
        name = name if isinstance(name, str) and name else UNNAMED
        offline = payload.get("action_source") in OFFLINE_SOURCES
        tallies.setdefault(name, _Tally()).add(user_data, offline=offline)
        overall.add(user_data, offline=offline)
    by_event = {name: _summarize(name, tally) for name, tally in sorted(tallies.items())}
    total = overall.count
    ranked = sorted(
        (
            (gap.impact * by_event[name].count / total, gap.text)
            for name, tally in tallies.items()
            for gap in _gaps(name, tally)
        ),
        key=lambda pair: -pair[0],
    )
    return QualityReport(
        by_event=by_event,
        overall=_summarize(OVERALL, overall),
        hints=[text for _impact, text in ranked[:MAX_HINTS]],
    )


def _summarize(name: str, tally: _Tally) -> EventQuality:
    n = tally.count
    malformed = {
        key: _share(tally.present[key] - tally.covered[key], tally.present[key])
        for key in ("fbc", "fbp")
    }
    hints = [gap.text for gap in sorted(_gaps(name, tally), key=lambda g: -g.impact)]
    return EventQuality(
        event_name=name,
        count=n,
        coverage={key: _share(c, n) for key, c in tally.covered.items()},
        present={key: _share(p, n) for key, p in tally.present.items()},
        malformed=malformed,
        score=round(tally.score_sum / n, 1) if n else 0.0,
        hints=hints[:MAX_HINTS],
    )


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass(frozen=True, slots=True)
class _Gap:
    impact: float  # expected score gain per event of this name if the gap were closed
    text: str


def _gaps(name: str, tally: _Tally) -> list[_Gap]:
    """Missing and invalid keys of one event name that are worth a sentence."""
    n = tally.count
    gaps: list[_Gap] = []
    label = "" if name == OVERALL else f"{name} "
    for key in MATCH_KEYS:
        missing = _share(tally.lacking[key.name], n)
        if missing >= HINT_MIN_SHARE:
            gaps.append(
                _Gap(
                    missing * _gain(key),
                    f"{_percent(missing)} of {label}events lack {key.noun}",
                )
            )
        bad = tally.present[key.name] - tally.covered[key.name]
        bad_share = _share(bad, tally.present[key.name])
        if bad and bad_share >= HINT_MIN_SHARE:
            gaps.append(
                _Gap(
                    _share(bad, n) * _gain(key),
                    f"{_percent(bad_share)} of {label}{key.name} values are {key.bad_value}",
                )
            )
    return gaps


def _gain(key: MatchKey) -> float:
    # Closing an ip or user-agent gap also earns the pair bonus.
    return key.weight + (IP_UA_PAIR_BONUS if key.name in _IP_UA else 0.0)


def _percent(share: float) -> str:
    return f"{round(share * 100)}%"
