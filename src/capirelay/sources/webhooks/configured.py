"""Every ``[webhooks.<name>]`` of the config resolved: its preset, its pixel, its compiled
mapping (a preset's own, or the file it names, with the catalog's content ids).

``capirelay serve`` builds these once, when the app is built, so a broken mapping file
stops the gateway at start with ``FILE:LINE: FIELD`` instead of failing on the first
order; ``capirelay doctor`` runs the same resolution and reports what would stop it.
"""

from __future__ import annotations

from dataclasses import dataclass

from capirelay.config import ConfigError, Settings, WebhookSettings, unconfigured_pixel_problem
from capirelay.sources.content_ids import (
    DEFAULT_TEMPLATES,
    PRESET_FIELDS,
    ContentIdTemplate,
    with_content_ids,
)
from capirelay.sources.mapping import EventMapping, MappingLoadError, load_mapping
from capirelay.sources.webhooks import WebhookPreset, get_preset

__all__ = ["ConfiguredWebhook", "load_webhooks"]


@dataclass(frozen=True, slots=True)
class ConfiguredWebhook:
    """A webhook ready to serve: its settings, preset and compiled mapping."""

    name: str
    settings: WebhookSettings
    preset: WebhookPreset
    mapping: EventMapping

    @property
    def source(self) -> str:
        return f"webhook:{self.name}"


def load_webhooks(settings: Settings) -> dict[str, ConfiguredWebhook]:
    """Resolve every ``[webhooks.<name>]``; :class:`ConfigError` lists what is wrong."""
    webhooks: dict[str, ConfiguredWebhook] = {}
    errors: list[str] = []
    for name, hook in settings.webhooks.items():
        try:
            webhooks[name] = _configure(name, hook, settings)
        except (ValueError, MappingLoadError) as exc:
            errors.append(f"webhooks.{name}: {exc}")
    if errors:
        raise ConfigError("invalid webhook configuration:\n  " + "\n  ".join(errors))
    return webhooks


def _configure(name: str, hook: WebhookSettings, settings: Settings) -> ConfiguredWebhook:
    preset = get_preset(hook.preset)
    if hook.pixel_id not in settings.pixels:
        # Validated settings have told it already; settings built without validation
        # (model_copy, model_construct) are told here.
        raise ValueError(unconfigured_pixel_problem(hook.pixel_id, settings.pixels))
    mapping = load_mapping(hook.mapping) if hook.mapping is not None else preset.default_mapping()
    if mapping is None:
        raise ValueError(f'preset {preset.name!r} needs mapping = "path/to/mapping.toml"')
    # The preset's catalog form applies to its own mapping; a user's mapping file keeps its
    # ids unless content_id is set explicitly.
    template = hook.content_id or (
        DEFAULT_TEMPLATES.get(preset.name) if hook.mapping is None else None
    )
    if template is not None:
        parsed = ContentIdTemplate.parse(
            template, PRESET_FIELDS.get(preset.name, {}), setting="content_id"
        )
        mapping = with_content_ids(mapping, parsed)
    return ConfiguredWebhook(name, hook, preset, mapping)
