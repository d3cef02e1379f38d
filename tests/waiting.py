"""Waiting for a condition, the one way tests wait (never sleep-then-assert).

``wait_for`` polls a condition from synchronous code (a gateway in a thread or a
subprocess); ``wait_for_async`` polls from a coroutine without blocking the event
loop, and accepts a condition that is a coroutine function.  Both return the
condition's first truthy value and fail with :class:`AssertionError` naming what was
awaited when the timeout passes: the timeout is only a bound on a hung test, never
something an assertion depends on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_TIMEOUT = 20.0


def wait_for(
    condition: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``condition`` until truthy; its value, or AssertionError at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last value {value!r})")
        time.sleep(interval)


async def wait_for_async(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.005,
    what: str = "condition",
) -> Any:
    """:func:`wait_for` for coroutines; ``condition`` may be sync or async."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)
