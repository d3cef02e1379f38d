"""Delivery: from the durable outbox to Meta's Graph API, one pixel worker at a time.

Each pixel's worker leases batches of up to ``delivery.batch_size`` events in
earliest-deadline-first order, sends them (up to ``max_in_flight`` requests
at once, lowered by AIMD when Meta throttles), and settles every event by
Meta's answer: ack, reschedule within the event's deadline, bisect a refused
batch down to the bad events and dead-letter only those, or open the pixel's
circuit breaker on token/setup errors and keep everything queued.  See
:mod:`capirelay.delivery.worker` for the exact rules.
"""

from capirelay.delivery.engine import DeliveryEngine
from capirelay.delivery.status import AIMDLimit, Breaker, BreakerState, LastError, PixelStatus
from capirelay.delivery.worker import PixelWorker
from capirelay.graph.errors import is_event_level

__all__ = [
    "AIMDLimit",
    "Breaker",
    "BreakerState",
    "DeliveryEngine",
    "LastError",
    "PixelStatus",
    "PixelWorker",
    "is_event_level",
]
