"""run_emulator(): a real server on a loopback port that starts and stops cleanly."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from capirelay.emulator import EmulatorState, run_emulator
from capirelay.graph import GraphClient, SyncGraphClient
from emulator_data import PIXEL, TOKEN, make_event
from waiting import wait_for

PIXELS = {PIXEL: TOKEN}


def test_binds_an_ephemeral_loopback_port_and_releases_it() -> None:
    with run_emulator(pixels=PIXELS) as emulator:
        assert emulator.host == "127.0.0.1"
        assert emulator.port > 0
        assert emulator.url == f"http://127.0.0.1:{emulator.port}"
        assert httpx.get(f"{emulator.url}/_emulator/stats").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emulator.url}/_emulator/stats", timeout=1)
    emulator.stop()  # a second stop is harmless


def test_two_emulators_run_side_by_side() -> None:
    with run_emulator(pixels=PIXELS) as first, run_emulator(pixels=PIXELS) as second:
        assert first.port != second.port
        with SyncGraphClient(base_url=first.url) as client:
            client.send_events(PIXEL, [make_event()], access_token=TOKEN)
        assert first.state.stats()["events_received"] == 1
        assert second.state.stats()["events_received"] == 0


def test_a_taken_port_raises() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError), run_emulator(port=taken.getsockname()[1]):
            pass


async def test_async_context_manager() -> None:
    async with run_emulator(pixels=PIXELS) as emulator:
        async with GraphClient(base_url=emulator.url) as client:
            result = await client.send_events(PIXEL, [make_event()], access_token=TOKEN)
        assert result.events_received == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emulator.url}/_emulator/stats", timeout=1)


def test_frozen_clock_drives_validation() -> None:
    frozen = 1_800_000_000
    with run_emulator(pixels=PIXELS, now=frozen) as emulator:
        assert emulator.state.now() == frozen
        with SyncGraphClient(base_url=emulator.url) as client:
            result = client.send_events(
                PIXEL, [make_event(event_time=frozen - 3600)], access_token=TOKEN
            )
    assert result.events_received == 1


def test_serving_an_existing_state() -> None:
    state = EmulatorState(pixels={"42": "T42"})
    with run_emulator(state=state, pixels=PIXELS) as emulator:
        assert emulator.state is state
        assert state.pixels() == sorted(["42", PIXEL])


def test_store_events_false_keeps_counts_and_dedup_but_no_bodies() -> None:
    with run_emulator(pixels=PIXELS, store_events=False) as emulator:
        with SyncGraphClient(base_url=emulator.url) as client:
            events = [make_event(i) for i in range(500)]
            client.send_events(PIXEL, events, access_token=TOKEN)
            client.send_events(PIXEL, events[:100], access_token=TOKEN)
            quality = client.dataset_quality(PIXEL, access_token=TOKEN)
        stats = emulator.state.stats()
    assert (stats["events_received"], stats["events_accepted"], stats["duplicates"]) == (
        600,
        500,
        100,
    )
    assert stats["stored_events"] == 0
    assert stats["dedup_keys"] == 500
    assert emulator.state.events(PIXEL) == []
    assert quality["web"][0]["event_match_quality"]["composite_score"] > 0


def test_stop_does_not_wait_for_a_hung_request() -> None:
    with run_emulator(pixels=PIXELS) as emulator:
        hang_once = {"kind": "timeout", "seconds": 60, "count": 1}
        httpx.post(f"{emulator.url}/_emulator/faults", json=hang_once).raise_for_status()
        outcomes: list[httpx.Response | BaseException] = []

        def hang() -> None:
            try:
                response = httpx.post(
                    f"{emulator.url}/v26.0/{PIXEL}/events",
                    json={"data": [make_event()], "access_token": TOKEN},
                    timeout=30,
                )
                outcomes.append(response)
            except httpx.HTTPError as exc:
                outcomes.append(exc)

        caller = threading.Thread(target=hang)
        caller.start()
        # The fault is used up once the request is hanging in it.
        wait_for(lambda: not emulator.state.faults.active(), what="the request hanging")
        emulator.stop()
    caller.join(10)
    assert not caller.is_alive()
    # Stop cut the hung request (an error page or a dropped connection) before the
    # caller's own 30 s timeout, which a stop waiting for the 60 s hang would let fire.
    [outcome] = outcomes
    assert not isinstance(outcome, httpx.TimeoutException), outcome
