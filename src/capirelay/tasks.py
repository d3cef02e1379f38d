"""Stopping background tasks for certain, whatever the libraries under them do with a cancel.

On Python 3.11 ``asyncio.wait_for`` loses a cancellation that arrives as the awaited thing
completes (gh-86296, fixed in 3.12). psycopg_pool waits for a free connection that way, so
one ``task.cancel()`` can be swallowed and a ``while True`` loop goes on forever; awaiting it
then hangs shutdown. :func:`cancel_and_wait` cancels again until the task has ended.

Those repeated cancels also land in a task's own clean-up (``except CancelledError:`` then
an await): :func:`finish_despite_cancels` runs such a clean-up to its end, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("capirelay")

#: How long one cancel gets before it is sent again.
RECANCEL_SECONDS = 0.05


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` and return once every one has ended, re-cancelling any that went on.

    A task's own exception is logged, not raised: the caller is shutting it down.
    """
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
    for ended in tasks:
        if ended is None or ended.cancelled():
            continue
        with contextlib.suppress(asyncio.CancelledError):
            if (exc := ended.exception()) is not None:
                log.warning("a background task ended with %s while stopping", type(exc).__name__)


async def finish_despite_cancels(cleanup: Awaitable[Any], *, timeout: float) -> None:
    """Run ``cleanup`` to its end, or for ``timeout`` seconds, whatever cancels the calling
    task receives meanwhile; its exception is logged, not raised.

    For the clean-up a task does once it has been cancelled (give back a lease, say):
    :func:`cancel_and_wait` cancels again every ``RECANCEL_SECONDS``, and a clean-up slower
    than that (a database round trip on a loaded machine) would be cut short each time.
    The caller re-raises its own CancelledError afterwards.  Past ``timeout`` the clean-up
    is cancelled in turn, so a hung resource cannot hold shutdown.
    """
    task = asyncio.ensure_future(cleanup)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("a clean-up did not finish within %.1f s while stopping", timeout)
            await cancel_and_wait(task)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=remaining)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("a clean-up ended with %s while stopping", type(exc).__name__)
