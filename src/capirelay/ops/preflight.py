"""Settings ``serve`` starts with but that quietly change or stop what it delivers.

Two of them load fine and only show later: a ``test_event_code`` left on after
testing (every event goes to Meta as a test event; Meta does not drop those,
and asks for the code to be removed in production), and a webhook whose
signing ``secret`` names an unset variable or a missing file (the first
delivery from the shop is answered 503 ``webhook_secret_missing``).  Each is a
:class:`Finding` here, worded once: ``capirelay doctor`` shows it as a row
(``blocking`` ones fail, the others warn) and ``serve`` logs it as a WARNING
when it starts (:func:`log_startup_findings`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from capirelay.config import Secret, Settings
from capirelay.graph.versions import DEFAULT_API_VERSION, beyond_the_table, version_status

__all__ = [
    "Finding",
    "api_version_findings",
    "log_startup_findings",
    "startup_findings",
    "test_event_code_findings",
    "webhook_secret_findings",
]

# Meta's own words (Conversions API, "Using the API"); the reason the code must go.
_TEST_EVENTS_COUNT = (
    "Meta asks for the code to be removed in production: test events are not dropped, "
    "they count in Events Manager, targeting and ads measurement like the others"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the doctor row it belongs to, what was seen and the fix.

    ``blocking``: something is refused until it is fixed (the doctor fails);
    otherwise delivery works but not as it should in production (the doctor warns).
    """

    check: str
    blocking: bool
    detail: str
    fix: str

    def log_line(self) -> str:
        return f"{self.detail}; {self.fix}"


def test_event_code_findings(settings: Settings) -> list[Finding]:
    """One finding per configured ``test_event_code`` (a pixel's or a webhook's)."""
    # (table, name, code, whose events, how else it may be set)
    owners = [
        (
            "pixels",
            pixel_id,
            pixel.test_event_code,
            f"every event for pixel {pixel_id} that carries no code of its own",
            f" (or unset CAPIRELAY_PIXELS__{pixel_id}__TEST_EVENT_CODE)",
        )
        for pixel_id, pixel in settings.pixels.items()
    ] + [
        ("webhooks", name, hook.test_event_code, f"every event from webhook {name}", "")
        for name, hook in settings.webhooks.items()
    ]
    return [
        Finding(
            "test events",
            blocking=False,
            detail=(
                f"{table}.{name}.test_event_code is set ({code}): {whose} goes to Meta as a "
                "test event"
            ),
            fix=(
                f"once testing is done, remove test_event_code from [{table}.{name}]{also} "
                f"and restart the gateway; {_TEST_EVENTS_COUNT}"
            ),
        )
        for table, name, code, whose, also in owners
        if code
    ]


def webhook_secret_findings(settings: Settings) -> list[Finding]:
    """One finding per webhook whose signing secret cannot be read right now."""
    return [
        Finding(
            "webhooks",
            blocking=True,
            detail=f"webhooks.{name}.secret ({hook.secret.describe()}) is missing or empty",
            fix=(
                f"{_secret_fix(f'webhooks.{name}.secret', hook.secret)}: until then every "
                f"delivery to POST /v1/webhooks/{name} is answered 503 webhook_secret_missing, "
                "which the sender retries for a limited time only"
            ),
        )
        for name, hook in settings.webhooks.items()
        if hook.secret.resolve() is None
    ]


def _secret_fix(setting: str, secret: Secret) -> str:
    if secret.env:
        return (
            f"export {secret.env}=<the webhook's signing secret, from the sender's settings> "
            "for the gateway's process"
        )
    if secret.file:
        return (
            f"write the webhook's signing secret (from the sender's settings) into {secret.file}, "
            "one line, readable by the gateway"
        )
    return f'set {setting}, e.g. {{ env = "..." }} or {{ file = "..." }}'


def api_version_findings(settings: Settings, today: date | None = None) -> list[Finding]:
    """One finding per pixel whose ``api_version`` is retired (blocking: Graph refuses
    every call with 2635), within its last 90 days, or unknown to capirelay.

    ``serve`` said nothing of it when it started: the Graph client warns once when it is
    first made, i.e. at the first delivery or diagnostics run, which an idle pixel or
    ``[diagnostics] enabled = false`` never reaches."""
    findings = []
    for pixel_id, pixel in settings.pixels.items():
        status = version_status(pixel.api_version, today)
        if status.state == "ok" or beyond_the_table(pixel.api_version):
            continue  # newer than capirelay's table: the Graph client does not warn either
        blocking = status.state == "expired"
        findings.append(
            Finding(
                "api version",
                blocking=blocking,
                detail=f"pixels.{pixel_id}.api_version: {status.advice}",
                fix=(
                    f'set api_version = "{DEFAULT_API_VERSION}" in [pixels.{pixel_id}] and '
                    "restart the gateway"
                    + ("; events for the pixel stay queued meanwhile" if blocking else "")
                ),
            )
        )
    return findings


def startup_findings(settings: Settings, today: date | None = None) -> list[Finding]:
    """Everything above, webhook secrets and retired API versions first (they refuse
    deliveries); no test code finding where every event is meant as a test event (the demo)."""
    test_codes = [] if settings.test_events_intended else test_event_code_findings(settings)
    return webhook_secret_findings(settings) + api_version_findings(settings, today) + test_codes


def log_startup_findings(settings: Settings, log: logging.Logger) -> None:
    """One WARNING per finding: what ``capirelay doctor`` would show, at ``serve``'s start."""
    for finding in startup_findings(settings):
        log.warning("%s", finding.log_line())
