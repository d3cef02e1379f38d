"""The closed vocabularies of a CAPI server event, as string enums.

Every enum is a :class:`enum.StrEnum` whose value is exactly what Meta expects
on the wire, so a member serializes to its value with ``json``, ``orjson`` and
``str()`` alike.  (The official SDK's plain ``Enum`` members cannot be
JSON-encoded, which is why its ``attribution_data`` cannot be sent.)

Values come from Meta's Server Event, Business Messaging and Custom Data pages
and, where Meta's docs are silent (attribution), from the facebook-business SDK.
"""

from __future__ import annotations

from enum import StrEnum


class ActionSource(StrEnum):
    """Where the conversion happened (``action_source``)."""

    EMAIL = "email"
    WEBSITE = "website"
    APP = "app"
    PHONE_CALL = "phone_call"
    CHAT = "chat"
    PHYSICAL_STORE = "physical_store"
    SYSTEM_GENERATED = "system_generated"
    BUSINESS_MESSAGING = "business_messaging"
    OTHER = "other"


class MessagingChannel(StrEnum):
    """The channel of a ``business_messaging`` event (the SDK knows only WhatsApp)."""

    MESSENGER = "messenger"
    WHATSAPP = "whatsapp"
    INSTAGRAM = "instagram"


class CustomerSegmentation(StrEnum):
    """How new the customer is to the business (``customer_segmentation``)."""

    NEW_CUSTOMER_TO_BUSINESS = "new_customer_to_business"
    NEW_CUSTOMER_TO_BUSINESS_LINE = "new_customer_to_business_line"
    NEW_CUSTOMER_TO_PRODUCT_AREA = "new_customer_to_product_area"
    NEW_CUSTOMER_TO_MEDIUM = "new_customer_to_medium"
    EXISTING_CUSTOMER_TO_BUSINESS = "existing_customer_to_business"
    EXISTING_CUSTOMER_TO_BUSINESS_LINE = "existing_customer_to_business_line"
    EXISTING_CUSTOMER_TO_PRODUCT_AREA = "existing_customer_to_product_area"
    EXISTING_CUSTOMER_TO_MEDIUM = "existing_customer_to_medium"
    CUSTOMER_IN_LOYALTY_PROGRAM = "customer_in_loyalty_program"


class DeliveryCategory(StrEnum):
    """How the goods reach the customer (``delivery_category``)."""

    IN_STORE = "in_store"
    CURBSIDE = "curbside"
    HOME_DELIVERY = "home_delivery"


class AttributionModel(StrEnum):
    CUSTOMIZED_MULTI_TOUCH = "customized_multi_touch"
    FIRST_TOUCH = "first_touch"
    LAST_CLICK = "last_click"
    LAST_TOUCH = "last_touch"
    LINEAR = "linear"
    POSITION_BASED = "position_based"
    TIME_DECAY = "time_decay"
    UNKNOWN = "unknown"


class AttributionMethod(StrEnum):
    ARD = "ard"
    DEEPLINK = "deeplink"
    GPIR = "gpir"
    INVALID_RESPONSE = "invalid_response"
    MIR = "mir"
    SRN = "srn"


class DeclineReason(StrEnum):
    ATTRIBUTE_TO_OTHER_SOURCE = "attribute_to_other_source"
    OUT_OF_LOOKBACK_WINDOW = "out_of_lookback_window"
    VIEW_THROUGH_DISABLED = "view_through_disabled"
    WITHIN_INACTIVE_WINDOW = "within_inactive_window"
    INACTIVE = "inactive"
    FRAUD_DETECTED = "fraud_detected"
    UNKNOWN = "unknown"
    REINSTALL_ATTRIBUTION_DISABLED = "reinstall_attribution_disabled"
    LOOKBACK = "lookback"
    NOT_PMOD_MATCH = "not_pmod_match"
    VALIDATION_RULE_DETECTED = "validation_rule_detected"
    PRELOAD_INSTALL = "preload_install"
    MIN_TIME_BETWEEN_RE_ENGAGEMENTS = "min_time_between_re_engagements"
    DUPLICATED = "duplicated"
    PMOD_DISABLED = "pmod_disabled"
