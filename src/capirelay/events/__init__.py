"""``capirelay.events``: the typed CAPI server event and its wire form.

The models cover Meta's documented Server Event surface (``user_data``,
``custom_data``, ``app_data`` with ``extinfo``, ``original_event_data``,
``attribution_data``, business messaging, LDU), accept CAPI-shaped dicts with
raw or already-hashed identifiers, and turn into wire dicts with
``Event.to_wire()``: normalized, SHA-256 hashed, compacted, with a
:class:`~capirelay.problems.Problem` for every value that had to be dropped.
:func:`encode_request` builds the request body for up to 1,000 events.
:func:`prepare_wire` is the ingest fast path: the same wire form as
``Event.model_validate(raw).to_wire()``, without building models for the
common shape of a CAPI-shaped dict.
"""

from capirelay.events._enums import (
    ActionSource,
    AttributionMethod,
    AttributionModel,
    CustomerSegmentation,
    DeclineReason,
    DeliveryCategory,
    MessagingChannel,
)
from capirelay.events._models import (
    AppData,
    AttributionData,
    AttributionSetting,
    Content,
    CustomData,
    Event,
    ExtInfo,
    OriginalEventData,
    WireEvent,
)
from capirelay.events._prepare import prepare_wire
from capirelay.events._request import MAX_EVENTS_PER_REQUEST, encode_request
from capirelay.events._user_data import UserData, explain_dropped_user_data

__all__ = [
    "MAX_EVENTS_PER_REQUEST",
    "ActionSource",
    "AppData",
    "AttributionData",
    "AttributionMethod",
    "AttributionModel",
    "AttributionSetting",
    "Content",
    "CustomData",
    "CustomerSegmentation",
    "DeclineReason",
    "DeliveryCategory",
    "Event",
    "ExtInfo",
    "MessagingChannel",
    "OriginalEventData",
    "UserData",
    "WireEvent",
    "encode_request",
    "explain_dropped_user_data",
    "prepare_wire",
]
