"""capirelay: a self-hosted gateway and Python library for the Meta Conversions API.

The library layers are usable on their own::

    from capirelay import Event, UserData, CustomData, Content, normalize, hash_field, GraphClient

``capirelay.normalize`` here is the function (``normalize(field, value,
country=None)``); its module is importable as usual with
``from capirelay.normalize import ...``.
"""

__version__ = "0.1.0"  # first: submodules read it while this package initializes

from capirelay.beacon_tokens import mint_beacon_token, verify_beacon_token
from capirelay.events import Content, CustomData, Event, UserData, WireEvent, encode_request
from capirelay.graph import EventsResponse, GraphClient, GraphError, RetryClass, SyncGraphClient
from capirelay.normalize import NormalizationError, hash_field, normalize
from capirelay.problems import Problem, Severity

__all__ = [
    "Content",
    "CustomData",
    "Event",
    "EventsResponse",
    "GraphClient",
    "GraphError",
    "NormalizationError",
    "Problem",
    "RetryClass",
    "Severity",
    "SyncGraphClient",
    "UserData",
    "WireEvent",
    "__version__",
    "encode_request",
    "hash_field",
    "mint_beacon_token",
    "normalize",
    "verify_beacon_token",
]
