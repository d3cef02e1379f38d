"""A plausible Dataset Quality API answer computed from what the emulator received.

Meta does not publish how Event Match Quality is scored, only which keys matter
most (email, phone, IP, name, click id; reference section 5).  The emulator's
score is therefore a documented approximation: each match key contributes its
coverage (share of accepted events carrying it) times a weight, capped at 10.
The weights are the gateway's own (:data:`capirelay.meta_facts.MATCH_KEY_WEIGHTS`),
so the emulator's score and ``capirelay doctor``'s prediction agree.
The shape follows ``GET /{version}/dataset_quality`` (``web[]`` per event name
with ``event_match_quality``, ``event_coverage``, ``dedupe_key_feedback`` and
``data_freshness``).  The emulator sees no browser events, so event coverage
is reported as full.
"""

from __future__ import annotations

from typing import Any

from capirelay.emulator.state import EmulatorState, KeyCoverage
from capirelay.meta_facts import IP_UA_PAIR_BONUS, MATCH_KEY_WEIGHTS

# wire key -> Dataset Quality identifier; weights are capirelay.meta_facts.MATCH_KEY_WEIGHTS,
# the same as the gateway's predicted score (capirelay.ops.quality).
IDENTIFIERS: dict[str, str] = {
    "em": "email",
    "ph": "phone",
    "client_ip_address": "ip_address",
    "fbc": "click_id",
    "external_id": "external_id",
    "fbp": "browser_id",
    "client_user_agent": "user_agent",
    "fn": "first_name",
    "ln": "last_name",
    "db": "date_of_birth",
    "ge": "gender",
    "ct": "city",
    "st": "state",
    "zp": "zip_code",
    "country": "country",
}
MATCH_KEYS: dict[str, tuple[str, float]] = {
    key: (identifier, MATCH_KEY_WEIGHTS.get(key, 0.0)) for key, identifier in IDENTIFIERS.items()
}
EVENT_COVERAGE_GOAL = 75
_HIGH_VALUE_KEYS = ("em", "ph", "client_ip_address", "fbc")


def dataset_quality_report(state: EmulatorState, dataset_id: str) -> dict[str, Any]:
    return {
        "web": [
            _event_report(name, coverage) for name, coverage in state.coverage(dataset_id).items()
        ]
    }


def _event_report(event_name: str, coverage: KeyCoverage) -> dict[str, Any]:
    shares = {key: coverage.keys.get(key, 0) / coverage.events for key in MATCH_KEYS}
    # Coverage per key only (not per event): the IP + user agent pair is credited for
    # the share that must carry both, and fn/ln for their own shares.
    pair = max(0.0, shares["client_ip_address"] + shares["client_user_agent"] - 1.0)
    weighted = sum(weight * shares[key] for key, (_, weight) in MATCH_KEYS.items())
    score = min(10.0, weighted + IP_UA_PAIR_BONUS * pair)
    return {
        "event_name": event_name,
        "event_match_quality": {
            "composite_score": round(score, 1),
            "match_key_feedback": [
                _key_feedback(key, shares[key]) for key in MATCH_KEYS if shares[key] > 0
            ],
            "diagnostics": _diagnostics(shares),
        },
        "event_coverage": {"percentage": 100.0, "goal_percentage": EVENT_COVERAGE_GOAL},
        "dedupe_key_feedback": [
            {
                "dedupe_key": "event_id",
                "server_events_with_dedupe_key": {
                    "percentage": _percent(coverage.with_event_id / coverage.events)
                },
            }
        ],
        "data_freshness": {
            "upload_frequency": "real_time",
            "last_received_at": int(coverage.last_received_at),
        },
    }


def _key_feedback(key: str, share: float) -> dict[str, Any]:
    identifier, _ = MATCH_KEYS[key]
    feedback: dict[str, Any] = {
        "identifier": identifier,
        "coverage": {"percentage": _percent(share)},
    }
    if share < 0.9:
        feedback["potential_aly_acr_increase"] = {
            "percentage": round((1 - share) * MATCH_KEYS[key][1] * 10, 2),
            "description": f"Estimated gain from sending {identifier} with every event "
            "(emulator approximation).",
        }
    return feedback


def _diagnostics(shares: dict[str, float]) -> list[dict[str, str]]:
    return [
        {
            "title": f"Send {MATCH_KEYS[key][0]} with more events",
            "description": f"Only {_percent(shares[key])}% of events carry {key}; it is one of "
            "the keys Meta names as high quality for matching.",
        }
        for key in _HIGH_VALUE_KEYS
        if shares[key] < 0.5
    ]


def _percent(share: float) -> float:
    return round(share * 100, 2)
