"""Run the emulator on a real loopback socket for tests, demos and users' CI.

``run_emulator()`` binds the socket itself (port 0 picks a free port, so parallel
test runs never collide), serves the app with uvicorn in a background thread,
returns only once the server accepts connections, and on exit stops it and
waits for the thread.  It works as a sync and as an async context manager::

    with run_emulator(pixels={"123": "TOKEN"}) as emulator:
        SyncGraphClient(base_url=emulator.url).send_events("123", events, access_token="TOKEN")
        assert emulator.state.stats()["events_accepted"] == len(events)
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import uvicorn

from capirelay.emulator.app import create_app
from capirelay.emulator.state import Clock, EmulatorState
from capirelay.listen import bind_listener

STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 5.0


@dataclass
class RunningEmulator:
    """A live emulator: its base ``url`` (no trailing slash) and its ``state``."""

    url: str
    host: str
    port: int
    state: EmulatorState
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _socket: socket.socket = field(repr=False)

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(SHUTDOWN_TIMEOUT)
            if self._thread.is_alive():
                # Requests still open after the graceful period (e.g. an injected hang).
                self._server.force_exit = True
                self._thread.join(SHUTDOWN_TIMEOUT)
        self._socket.close()


class EmulatorRunner:
    """Context manager (sync and async) around one emulator server."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        state: EmulatorState,
    ) -> None:
        self.host = host
        self.port = port
        self.state = state
        self._running: RunningEmulator | None = None

    def start(self) -> RunningEmulator:
        sock = bind_listener(self.host, self.port)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            date_header=False,  # the app stamps Date from the emulator's clock
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"capirelay-emulator-{port}"
        )
        thread.daemon = True
        thread.start()
        host_in_url = f"[{self.host}]" if ":" in self.host else self.host
        running = RunningEmulator(
            f"http://{host_in_url}:{port}", self.host, port, self.state, server, thread, sock
        )
        _wait_until_started(running)
        self._running = running
        return running

    def stop(self) -> None:
        if self._running is not None:
            self._running.stop()
            self._running = None

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> RunningEmulator:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def run_emulator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    pixels: Mapping[str, str] | None = None,
    now: float | Clock | None = None,
    store_events: bool = True,
    state: EmulatorState | None = None,
    fault_seed: int | None = None,
    app_secret: str | None = None,
) -> EmulatorRunner:
    """An emulator serving ``pixels`` ({pixel_id: token}); ``port=0`` picks a free port.

    ``app_secret``: the app's secret, so that ``appsecret_proof`` values are verified.
    ``now`` freezes (a timestamp) or drives (a callable) the emulator's clock, which
    decides event-time validation, dedup windows and version expiry.  Pass ``state``
    to serve an existing :class:`EmulatorState` (the other arguments then only add
    ``pixels``).
    """
    if state is None:
        state = EmulatorState(
            pixels=pixels,
            now=now,
            store_events=store_events,
            fault_seed=fault_seed,
            app_secret=app_secret,
        )
    else:
        for pixel_id, token in (pixels or {}).items():
            state.register_pixel(pixel_id, token)
    return EmulatorRunner(host=host, port=port, state=state)


def _wait_until_started(running: RunningEmulator) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not running._server.started:
        if not running._thread.is_alive():
            running._socket.close()
            raise RuntimeError("the emulator server exited during startup")
        if time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"the emulator did not start within {STARTUP_TIMEOUT} s")
        time.sleep(0.005)
