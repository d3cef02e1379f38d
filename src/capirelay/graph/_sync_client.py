"""``SyncGraphClient``: the blocking twin of :class:`~capirelay.graph.GraphClient`.

Same arguments, same behaviour: it shares the I/O-free request builder, response
reader and transport-error naming of :mod:`capirelay.graph._client`; only the
I/O (``httpx.Client`` instead of ``httpx.AsyncClient``) differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from capirelay.graph import _pixel
from capirelay.graph._client import (
    DEFAULT_BASE_URL,
    DEFAULT_DATASET_QUALITY_FIELDS,
    DEFAULT_TIMEOUT,
    MAX_STATS_PAGES,
    EventInput,
    EventsResponse,
    _Call,
    _client_options,
    _da_checks_params,
    _dataset_quality_params,
    _pixel_path,
    _read_json,
    _RequestBuilder,
    _transport_errors,
)
from capirelay.graph._pixel import AdsPixelSettings, DACheck, StatsBucket
from capirelay.graph.versions import DEFAULT_API_VERSION


class SyncGraphClient:
    """The blocking twin of :class:`GraphClient` (same arguments, same behaviour)."""

    def __init__(
        self,
        *,
        api_version: str = DEFAULT_API_VERSION,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        app_secret: str | None = None,
        partner_agent: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._builder = _RequestBuilder(
            api_version=api_version,
            base_url=base_url,
            app_secret=app_secret,
            partner_agent=partner_agent,
        )
        self._http = httpx.Client(**_client_options(timeout, transport))

    @property
    def api_version(self) -> str:
        return self._builder.api_version

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send_events(
        self,
        pixel_id: str | int,
        events: Sequence[EventInput],
        *,
        access_token: str,
        test_event_code: str | None = None,
        partner_agent: str | None = None,
        namespace_id: str | None = None,
        upload_id: str | None = None,
        upload_tag: str | None = None,
        upload_source: str | None = None,
    ) -> EventsResponse:
        """POST up to 1,000 events; raises :class:`GraphError` on any failure."""
        call = self._builder.events_request(
            pixel_id,
            events,
            access_token=access_token,
            test_event_code=test_event_code,
            partner_agent=partner_agent,
            namespace_id=namespace_id,
            upload_id=upload_id,
            upload_tag=upload_tag,
            upload_source=upload_source,
        )
        response = self._send(call)
        return self._builder.read_events_response(response, access_token)

    def debug_token(self, input_token: str, *, access_token: str) -> dict[str, Any]:
        """See :meth:`GraphClient.debug_token`."""
        return self._get("debug_token", {"input_token": input_token}, access_token)

    def dataset_quality(
        self,
        dataset_id: str | int,
        *,
        access_token: str,
        fields: str = DEFAULT_DATASET_QUALITY_FIELDS,
        agent_name: str | None = None,
    ) -> dict[str, Any]:
        """See :meth:`GraphClient.dataset_quality`."""
        params = _dataset_quality_params(dataset_id, fields, agent_name)
        return self._get("dataset_quality", params, access_token)

    def pixel_settings(self, pixel_id: str | int, *, access_token: str) -> AdsPixelSettings:
        """See :meth:`GraphClient.pixel_settings`."""
        answer = self._get(
            _pixel_path(pixel_id), {"fields": _pixel.PIXEL_SETTINGS_FIELDS}, access_token
        )
        return _pixel.parse_pixel_settings(str(pixel_id), answer)

    def update_pixel_settings(
        self,
        pixel_id: str | int,
        *,
        access_token: str,
        enable_automatic_matching: bool | None = None,
        automatic_matching_fields: Sequence[str] | None = None,
        first_party_cookie_status: str | None = None,
    ) -> dict[str, Any]:
        """See :meth:`GraphClient.update_pixel_settings`."""
        params = _pixel.pixel_update_params(
            enable_automatic_matching=enable_automatic_matching,
            automatic_matching_fields=automatic_matching_fields,
            first_party_cookie_status=first_party_cookie_status,
        )
        call = self._builder.post_form_request(_pixel_path(pixel_id), params, access_token)
        return _read_json(self._send(call), access_token)

    def da_checks(
        self,
        pixel_id: str | int,
        *,
        access_token: str,
        connection_method: str = "SERVER",
        checks: Sequence[str] | None = None,
    ) -> list[DACheck]:
        """See :meth:`GraphClient.da_checks`."""
        params = _da_checks_params(connection_method, checks)
        answer = self._get(_pixel_path(pixel_id, "da_checks"), params, access_token)
        return _pixel.parse_da_checks(answer)

    def pixel_stats(
        self,
        pixel_id: str | int,
        *,
        access_token: str,
        aggregation: str,
        start_time: float,
        end_time: float,
        event_source: str | None = None,
    ) -> list[StatsBucket]:
        """See :meth:`GraphClient.pixel_stats`."""
        params = _pixel.stats_params(aggregation, start_time, end_time, event_source)
        buckets: list[StatsBucket] = []
        for _page in range(MAX_STATS_PAGES):
            answer = self._get(_pixel_path(pixel_id, "stats"), params, access_token)
            buckets.extend(_pixel.parse_stats(answer))
            after = _pixel.next_cursor(answer)
            if after is None:
                break
            params = {**params, "after": after}
        return buckets

    def _get(self, path: str, params: dict[str, str], access_token: str) -> dict[str, Any]:
        response = self._send(self._builder.get_request(path, params, access_token))
        return _read_json(response, access_token)

    def _send(self, call: _Call) -> httpx.Response:
        request = self._http.build_request(call.method, call.url, **call.options)
        with _transport_errors(call.url):
            return self._http.send(request)
