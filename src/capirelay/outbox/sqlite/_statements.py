"""The SQLite backend's SQL, loaded once: named statements and numbered migrations."""

from __future__ import annotations

from typing import Final

from capirelay.outbox._sql import Migration, load_migrations, load_queries
from capirelay.outbox.base import ATTEMPT_LOG_LIMIT

# queue.lease_id of a row no lease holds; lease ids lie above it (migration 0002 says why).
NO_LEASE: Final = 1 << 62

MIGRATIONS: Final[tuple[Migration, ...]] = load_migrations("capirelay.outbox.sqlite")
QUERIES: Final = load_queries(
    "capirelay.outbox.sqlite",
    {"attempt_log_limit": ATTEMPT_LOG_LIMIT, "no_lease": NO_LEASE},
)
