"""The typed server event and everything in it except ``user_data``.

One pydantic model per object Meta documents (Server Event, Custom Data, App
Data, Original Event Data, attribution), covering Meta's whole documented
surface rather than the SDK's subset.  Each model knows its wire form
(``to_wire``): ``None`` and blank values dropped, enums as their ``.value``,
nested models as plain dicts, so the result is ready for ``orjson``/``json``.

Wire-form choices:

* ``currency`` is emitted lowercase ISO 4217 (``"usd"``): Meta's examples and
  the SDK use lowercase, Meta matches case-insensitively.  An unknown code is
  dropped with a ``invalid_currency`` warning rather than sent to be rejected.
* ``customer_segmentation`` is accepted on the event or in ``custom_data`` and
  emitted inside ``custom_data``, where Meta's documented sample puts it.
* ``data_processing_options=[]`` is kept: Meta reads the empty list as an
  explicit "no Limited Data Use", which is not the same as leaving it out.
* ``extinfo`` is always the 16-slot positional list, missing slots ``""`` as
  Meta's App Data page says (the SDK sends ``null``); the two tracking flags
  go out as ``0``/``1`` as in Meta's examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Final

import pycountry
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from capirelay.events._enums import (
    ActionSource,
    AttributionMethod,
    AttributionModel,
    CustomerSegmentation,
    DeclineReason,
    DeliveryCategory,
    MessagingChannel,
)
from capirelay.events._ids import IdList, IdText
from capirelay.events._user_data import UserData
from capirelay.problems import Problem, warning

EXTINFO_SLOTS: Final = 16
ISO_4217_CODES: Final[frozenset[str]] = frozenset(
    currency.alpha_3.lower() for currency in pycountry.currencies
)


def to_unix_seconds(value: Any) -> Any:
    """Coerce the accepted ``event_time`` forms to int seconds; pydantic reports the rest."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise ValueError("event_time must be Unix seconds, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("event_time must be whole Unix seconds; pass int(time.time())")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                "event_time must be Unix seconds or an ISO-8601 timestamp with an offset"
            ) from None
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(
                "event_time datetime has no timezone; use an aware one such as "
                "datetime.now(timezone.utc)"
            )
        return int(value.timestamp())
    return value


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads True as 1; for a price that is a bug upstream, not a value.
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


UnixSeconds = Annotated[int, BeforeValidator(to_unix_seconds)]
StrList = Annotated[list[str], BeforeValidator(_as_list)]
Amount = Annotated[int | float, BeforeValidator(_not_bool)]


# Exact types that are already JSON-ready; checked first because they are most values.
_PLAIN_TYPES: Final = frozenset({str, int, float, bool})


def compact(model: BaseModel) -> dict[str, Any]:
    """A model's wire dict: declared fields then extras, empty values dropped."""
    out: dict[str, Any] = {}
    for key, value in model.__dict__.items():
        if value is None or value == "":
            continue
        if type(value) in _PLAIN_TYPES:
            out[key] = value
            continue
        converted = wire_value(value)
        if converted != [] and converted != {}:
            out[key] = converted
    extra = model.__pydantic_extra__
    if extra:
        for key, value in extra.items():
            if value is not None:
                out[key] = wire_value(value)
    return out


def wire_value(value: Any) -> Any:
    """A JSON-ready copy of ``value``: enums to ``.value``, models to compact dicts."""
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return compact(value)
    if isinstance(value, list | tuple):
        return [wire_value(item) for item in value]
    if isinstance(value, Mapping):
        return {key: wire_value(item) for key, item in value.items()}
    return value


class _Strict(BaseModel):
    # hide_input_in_errors: a ValidationError's text must not quote an email or IP.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, hide_input_in_errors=True)


class _Open(BaseModel):
    """Objects where Meta allows keys of the advertiser's own (custom properties)."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, hide_input_in_errors=True)


class Content(_Open):
    """One line of ``custom_data.contents``; extra keys pass through."""

    id: IdText | None = None
    quantity: int | None = None
    item_price: float | None = None
    title: str | None = None
    description: str | None = None
    brand: str | None = None
    category: str | None = None
    delivery_category: DeliveryCategory | None = None


class CustomData(_Open):
    """``custom_data``: the standard keys typed, vertical and custom keys passed through."""

    value: Amount | None = None
    net_revenue: Amount | None = None
    currency: str | None = None
    content_name: str | None = None
    content_category: str | None = None
    content_ids: IdList | None = None
    contents: list[Content] | None = None
    content_type: str | None = None
    order_id: IdText | None = None
    predicted_ltv: Amount | None = None
    num_items: int | None = None
    status: str | None = None
    search_string: str | None = None
    delivery_category: DeliveryCategory | None = None
    item_number: str | None = None
    customer_segmentation: CustomerSegmentation | None = None

    def to_wire(self, problems: list[Problem]) -> dict[str, Any]:
        out = compact(self)
        normalize_currency(out, problems)
        return out


def normalize_currency(custom_data: dict[str, Any], problems: list[Problem]) -> None:
    """Lower-case a wire ``custom_data``'s currency in place; drop one that is not ISO 4217."""
    currency = custom_data.get("currency")
    if currency is not None:
        code = currency.strip().lower()
        if code in ISO_4217_CODES:
            custom_data["currency"] = code
        else:
            del custom_data["currency"]
            problems.append(currency_problem())


def currency_problem() -> Problem:
    return warning(
        "invalid_currency",
        "custom_data.currency",
        "custom_data.currency is not an ISO 4217 code and was dropped; "
        "send a three-letter code such as 'usd'.",
    )


class ExtInfo(_Strict):
    """The 16 positional ``app_data.extinfo`` slots, by name, in wire order."""

    ext_info_version: str = ""
    app_package_name: str = ""
    short_version: str = ""
    long_version: str = ""
    os_version: str = ""
    device_model_name: str = ""
    locale: str = ""
    timezone_abbreviation: str = ""
    carrier: str = ""
    screen_width: str = ""
    screen_height: str = ""
    screen_density: str = ""
    cpu_core_count: str = ""
    total_disk_space_gb: str = ""
    free_disk_space_gb: str = ""
    device_time_zone: str = ""

    def to_list(self) -> list[str]:
        return list(self.__dict__.values())

    @classmethod
    def from_list(cls, slots: list[str]) -> ExtInfo:
        return cls(**dict(zip(cls.model_fields, slots, strict=False)))


class AppData(_Strict):
    """``app_data`` for ``action_source="app"`` events."""

    advertiser_tracking_enabled: bool | None = None
    application_tracking_enabled: bool | None = None
    extinfo: ExtInfo | None = None
    campaign_ids: str | None = None
    consider_views: bool | None = None
    include_dwell_data: bool | None = None
    include_video_data: bool | None = None
    install_referrer: str | None = None
    installer_package: str | None = None
    receipt_data: str | None = None
    url_schemes: StrList | None = None
    vendor_id: str | None = None
    windows_attribution_id: str | None = None

    @field_validator("extinfo", mode="before")
    @classmethod
    def _extinfo_from_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) > EXTINFO_SLOTS:
                raise ValueError(f"extinfo has {EXTINFO_SLOTS} slots, got {len(value)}")
            return ExtInfo.from_list(["" if slot is None else slot for slot in value])
        return value

    def to_wire(self) -> dict[str, Any]:
        out = compact(self)
        for flag in ("advertiser_tracking_enabled", "application_tracking_enabled"):
            if flag in out:
                out[flag] = int(out[flag])
        if self.extinfo is not None:
            out["extinfo"] = self.extinfo.to_list()
        return out


class OriginalEventData(_Strict):
    """The event a later event refers to (e.g. the purchase of a refund)."""

    event_name: str | None = None
    event_time: UnixSeconds | None = None
    order_id: IdText | None = None
    event_id: IdText | None = None


class AttributionSetting(_Strict):
    inactivity_window_hours: int | None = None
    reattribution_window_hours: int | None = None


class AttributionData(_Strict):
    """Advertiser-side attribution (fields as in the SDK; Meta's page is not public)."""

    scope: str | None = None
    visit_time: UnixSeconds | None = None
    ad_id: str | None = None
    adset_id: str | None = None
    campaign_id: str | None = None
    attribution_share: float | None = None
    attribution_model: AttributionModel | None = None
    attr_window: int | None = None
    attribution_value: float | None = None
    attribution_source: str | None = None
    touchpoint_type: str | None = None
    touchpoint_ts: UnixSeconds | None = None
    attribution_method: AttributionMethod | None = None
    decline_reason: DeclineReason | None = None
    auditing_token: str | None = None
    linkage_key: str | None = None
    touchpoint_id: str | None = None
    attribution_setting: AttributionSetting | None = None
    total_credit: float | None = None
    partner_client_id: str | None = None


@dataclass(slots=True)
class WireEvent:
    """An event's wire dict plus what was dropped from it on the way."""

    payload: dict[str, Any]
    problems: list[Problem]


_PLAIN_EVENT_FIELDS: Final = (
    "event_id",
    "event_source_url",
    "referrer_url",
    "opt_out",
    "data_processing_options_country",
    "data_processing_options_state",
    "advanced_measurement_table",
)


class Event(_Strict):
    """One server event, as Meta's Server Event page documents it.

    ``Event.model_validate(wire_dict)`` accepts a CAPI-shaped dict with raw or
    hashed identifiers; unknown keys are rejected naming the key.
    ``event_time`` takes int seconds, an int-valued float, an ISO-8601 string
    with offset, or an aware ``datetime``.
    """

    event_name: str = Field(min_length=1)
    event_time: UnixSeconds
    action_source: ActionSource | None = None
    event_id: IdText | None = None
    event_source_url: str | None = None
    referrer_url: str | None = None
    opt_out: bool | None = None
    user_data: UserData = Field(default_factory=UserData)
    custom_data: CustomData | None = None
    app_data: AppData | None = None
    original_event_data: OriginalEventData | None = None
    attribution_data: AttributionData | None = None
    messaging_channel: MessagingChannel | None = None
    customer_segmentation: CustomerSegmentation | None = None
    data_processing_options: StrList | None = None
    data_processing_options_country: int | None = None
    data_processing_options_state: int | None = None
    advanced_measurement_table: str | None = None

    @model_validator(mode="after")
    def _one_customer_segmentation(self) -> Event:
        custom = self.custom_data
        if (
            self.customer_segmentation is not None
            and custom is not None
            and custom.customer_segmentation is not None
            and custom.customer_segmentation != self.customer_segmentation
        ):
            raise ValueError(
                "customer_segmentation is set both on the event and in custom_data with "
                "different values; set it once"
            )
        return self

    def to_wire(self, default_country: str | None = None) -> WireEvent:
        """Normalize, hash and compact this event; never raises for a bad identifier.

        ``default_country`` completes national phone numbers, states and zips
        when the event's own ``user_data.country`` is absent.
        """
        problems: list[Problem] = []
        fields = self.__dict__
        payload: dict[str, Any] = {"event_name": self.event_name, "event_time": self.event_time}
        if self.action_source is not None:
            payload["action_source"] = self.action_source.value
        for key in _PLAIN_EVENT_FIELDS:
            value = fields[key]
            if value is not None and value != "":
                payload[key] = value
        user_data = self.user_data.to_wire(default_country, problems)
        if user_data:
            payload["user_data"] = user_data
        custom_data = self._custom_data_wire(problems)
        if custom_data:
            payload["custom_data"] = custom_data
        self._add_nested(payload)
        if self.data_processing_options is not None:
            payload["data_processing_options"] = self.data_processing_options
        return WireEvent(payload, problems)

    def to_payload(self, default_country: str | None = None) -> dict[str, Any]:
        """The wire dict alone; use :meth:`to_wire` to see what was dropped."""
        return self.to_wire(default_country).payload

    def _custom_data_wire(self, problems: list[Problem]) -> dict[str, Any]:
        out = self.custom_data.to_wire(problems) if self.custom_data is not None else {}
        if self.customer_segmentation is not None:
            out["customer_segmentation"] = self.customer_segmentation.value
        return out

    def _add_nested(self, payload: dict[str, Any]) -> None:
        if self.app_data is not None:
            payload["app_data"] = self.app_data.to_wire()
        for key in ("original_event_data", "attribution_data"):
            model = self.__dict__[key]
            if model is not None:
                nested = compact(model)
                if nested:
                    payload[key] = nested
        if self.messaging_channel is not None:
            payload["messaging_channel"] = self.messaging_channel.value
