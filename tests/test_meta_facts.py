"""Meta's facts have one definition (capirelay.meta_facts) and every layer reads it."""

from __future__ import annotations

import pytest

from capirelay import events, graph, meta_facts, validate
from capirelay.emulator import _quality as emulator_quality
from capirelay.events._user_data import MULTI_VALUE_KEYS
from capirelay.graph.errors import CODE_100_SUBCODES
from capirelay.normalize import WIRE_KEYS
from capirelay.ops.quality import MATCH_KEYS


def test_batch_limit_is_the_same_object_everywhere() -> None:
    assert events.MAX_EVENTS_PER_REQUEST is meta_facts.MAX_EVENTS_PER_REQUEST
    assert graph.MAX_EVENTS_PER_REQUEST is meta_facts.MAX_EVENTS_PER_REQUEST
    assert validate.MAX_EVENTS_PER_REQUEST is meta_facts.MAX_EVENTS_PER_REQUEST
    with pytest.raises(ValueError, match="at most 1000"):
        validate.validate_batch([{}] * (meta_facts.MAX_EVENTS_PER_REQUEST + 1), now=0)


def test_user_data_keys_agree_between_sdk_normalizer_and_rules() -> None:
    assert {wire for _, wire in MULTI_VALUE_KEYS} == set(meta_facts.MULTI_VALUE_HASHED_KEYS)
    hashed = set(meta_facts.HASHED_USER_DATA_KEYS)
    assert {wire for wire in WIRE_KEYS.values()} == hashed
    assert not hashed & set(meta_facts.UNHASHED_USER_DATA_KEYS)


def test_match_quality_weights_are_shared_and_sum_to_ten() -> None:
    predicted = sum(key.weight for key in MATCH_KEYS) + meta_facts.IP_UA_PAIR_BONUS
    assert predicted == 10.0
    for wire_key, (_, weight) in emulator_quality.MATCH_KEYS.items():
        assert weight == meta_facts.MATCH_KEY_WEIGHTS.get(wire_key, 0.0)
    assert emulator_quality.MATCH_KEYS["ph"][1] == 1.5


def test_subcodes_of_the_rules_are_in_the_graph_table() -> None:
    for subcode in set(validate.META_SUBCODES.values()):
        assert subcode in CODE_100_SUBCODES, subcode
    assert CODE_100_SUBCODES[meta_facts.SUBCODE_EVENT_TOO_OLD].dead_letter == "expired"


def test_graph_codes_the_emulator_answers_are_the_ones_the_client_classifies() -> None:
    from capirelay.emulator.faults import THROTTLE_CODES as EMULATED_THROTTLES
    from capirelay.graph.errors import (
        AUTH_CODES,
        CONFIG_CODES,
        THROTTLE_CODES,
        TRANSIENT_CODES,
        RetryClass,
        classify,
    )

    assert set(EMULATED_THROTTLES) <= THROTTLE_CODES
    assert meta_facts.CODE_ACCESS_TOKEN in AUTH_CODES
    assert {meta_facts.CODE_UNKNOWN_PATH, meta_facts.CODE_VERSION_DEPRECATED} <= CONFIG_CODES
    assert meta_facts.CODE_SERVICE in TRANSIENT_CODES
    # The four classes never claim the same code.
    sets = [AUTH_CODES, CONFIG_CODES, THROTTLE_CODES, TRANSIENT_CODES]
    assert sum(len(s) for s in sets) == len(set().union(*sets))
    assert classify(400, meta_facts.CODE_RATE_LIMIT, None, False) is RetryClass.THROTTLED
