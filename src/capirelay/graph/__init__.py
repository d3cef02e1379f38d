"""``capirelay.graph``: the Conversions API client, its typed errors and the version table.

Usable on its own, without the gateway: ``GraphClient`` / ``SyncGraphClient`` send
events, every failure is a ``GraphError`` with a ``RetryClass``.
"""

from capirelay.graph import versions
from capirelay.graph._client import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    EventsResponse,
    GraphClient,
    appsecret_proof,
    encode_events_body,
)
from capirelay.graph._pixel import (
    AAM_FIELDS,
    AdsPixelSettings,
    DACheck,
    StatsBucket,
    StatsRow,
)
from capirelay.graph._sync_client import SyncGraphClient
from capirelay.graph.errors import GraphError, RetryClass, classify, explain
from capirelay.graph.versions import (
    API_VERSIONS,
    DEFAULT_API_VERSION,
    VersionStatus,
    version_status,
)
from capirelay.meta_facts import MAX_EVENTS_PER_REQUEST

__all__ = [
    "AAM_FIELDS",
    "API_VERSIONS",
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "MAX_EVENTS_PER_REQUEST",
    "USER_AGENT",
    "AdsPixelSettings",
    "DACheck",
    "EventsResponse",
    "GraphClient",
    "GraphError",
    "RetryClass",
    "StatsBucket",
    "StatsRow",
    "SyncGraphClient",
    "VersionStatus",
    "appsecret_proof",
    "classify",
    "encode_events_body",
    "explain",
    "version_status",
    "versions",
]
