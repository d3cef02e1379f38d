"""Stopping background tasks for certain, whatever the libraries under them do with a cancel.

On Python 3.11 ``asyncio.wait_for`` loses a cancellation that arrives as the awaited thing
completes (gh-86296, fixed in 3.12). psycopg_pool waits for a free connection that way, so
one ``task.cancel()`` can be swallowed and a ``while True`` loop goes on forever; awaiting it
then hangs shutdown. :func:`cancel_and_wait` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
