"""``capirelay.emulator``: a faithful local Graph API for development, demos and tests.

``create_app(state)`` is the Starlette app; ``EmulatorState`` what it remembers;
``run_emulator()`` (in :mod:`capirelay.emulator.testing`) serves it on a loopback
port; ``capirelay emulator`` runs it in the foreground.
"""

from capirelay.emulator.app import create_app
from capirelay.emulator.faults import Fault, FaultBook, FaultKind, parse_fault
from capirelay.emulator.state import DEDUP_WINDOW_SECONDS, EmulatorState, StoredEvent
from capirelay.emulator.testing import RunningEmulator, run_emulator

__all__ = [
    "DEDUP_WINDOW_SECONDS",
    "EmulatorState",
    "Fault",
    "FaultBook",
    "FaultKind",
    "RunningEmulator",
    "StoredEvent",
    "create_app",
    "parse_fault",
    "run_emulator",
]
