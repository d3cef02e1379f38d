"""``capirelay pixel status|enable-aam|first-party-cookies``: the pixel's settings at Meta.

Reads and writes the AdsPixel fields ``enable_automatic_matching``,
``automatic_matching_fields`` and ``first_party_cookie_status`` with each
configured pixel's own token (``--config`` or ``CAPIRELAY_CONFIG``).  A token
that may read but not edit the pixel gets Meta's error and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from capirelay.cli._output import err_console, error
from capirelay.config import ConfigError, Settings, load_settings
from capirelay.graph import GraphError, SyncGraphClient
from capirelay.graph._pixel import AAM_FIELDS, COOKIE_DISABLED, COOKIE_ENABLED
from capirelay.ops.meta_advice import AAM_OFF, COOKIES_DISABLED, advice_for, explain_settings_error

pixel_app = typer.Typer(
    help="Automatic Advanced Matching and first-party cookies of your pixels, at Meta.",
    no_args_is_help=True,
)
console = Console()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="capirelay.toml (default: $CAPIRELAY_CONFIG).")
]
PixelOpt = Annotated[
    str | None, typer.Option("--pixel", help="Only this pixel (default: every configured one).")
]
GRAPH_TIMEOUT = 10.0


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


def _targets(settings: Settings, pixel: str | None) -> list[tuple[str, str, str | None]]:
    """(pixel id, token, app secret) of the pixels to act on; exits 2 naming what is missing."""
    if pixel is not None and pixel not in settings.pixels:
        known = ", ".join(settings.pixels) or "none"
        error(f"--pixel {pixel}: not in the config's [pixels] (have: {known})")
        raise typer.Exit(2)
    chosen = [pixel] if pixel else list(settings.pixels)
    if not chosen:
        error('no pixels configured: add a [pixels."<id>"] table')
        raise typer.Exit(2)
    out = []
    for pixel_id in chosen:
        conf = settings.pixels[pixel_id]
        token = conf.access_token.resolve() if conf.access_token else None
        if not token:
            error(f'pixel {pixel_id}: no access_token; set pixels."{pixel_id}".access_token')
            raise typer.Exit(2)
        secret = conf.app_secret.resolve() if conf.app_secret else None
        out.append((pixel_id, token, secret))
    return out


def _client(settings: Settings, pixel_id: str, secret: str | None) -> SyncGraphClient:
    return SyncGraphClient(
        api_version=settings.pixels[pixel_id].api_version,
        base_url=settings.graph_url,
        timeout=GRAPH_TIMEOUT,
        app_secret=secret,
    )


@pixel_app.command("status")
def status_command(
    config: ConfigOpt = None,
    pixel: PixelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Whether AAM is on (and for which fields) and the first-party cookie status."""
    settings = _settings(config)
    rows: list[dict[str, object]] = []
    failed = False
    for pixel_id, token, secret in _targets(settings, pixel):
        with _client(settings, pixel_id, secret) as client:
            try:
                found = client.pixel_settings(pixel_id, access_token=token)
            except GraphError as err:
                failed = True
                rows.append({"pixel_id": pixel_id, "error": explain_settings_error(err, pixel_id)})
                continue
        warnings = []
        if not found.aam_on:
            warnings.append(advice_for(AAM_OFF))
        if found.cookies_disabled:
            warnings.append(advice_for(COOKIES_DISABLED))
        rows.append({**found.to_dict(), "warnings": warnings})
    if as_json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        _render(rows)
    if failed:
        raise typer.Exit(1)


# Meta's first_party_cookie_status values, as the table says them (--json keeps Meta's).
_COOKIE_WORDS = {COOKIE_ENABLED: "enabled", COOKIE_DISABLED: "disabled"}


def _render(rows: list[dict[str, object]]) -> None:
    """Nothing is cut at 80 columns: the pixel id stays on one line, the cookie state is a
    word ("disabled") that fits, and the AAM fields and the advice wrap (a word wider
    than its column folds)."""
    table = Table(title="Pixel settings at Meta", show_lines=True, expand=True)
    table.add_column("pixel", no_wrap=True)
    table.add_column("Automatic Advanced Matching", ratio=1, overflow="fold")
    table.add_column("first-party\ncookies", min_width=len("disabled"), overflow="fold")
    table.add_column("what to do", ratio=2, overflow="fold")
    for row in rows:
        if "error" in row:
            table.add_row(str(row["pixel_id"]), "?", "?", f"[red]{row['error']}[/red]")
            continue
        fields = row["automatic_matching_fields"]
        assert isinstance(fields, list)
        aam = (
            f"[green]on[/green] ({', '.join(fields) or 'Meta default fields'})"
            if row["enable_automatic_matching"]
            else "[yellow]off[/yellow]"
        )
        cookie = str(row["first_party_cookie_status"] or "unknown")
        style = "yellow" if cookie == COOKIE_DISABLED else "green"
        warnings = row["warnings"]
        assert isinstance(warnings, list)
        table.add_row(
            str(row["pixel_id"]),
            aam,
            f"[{style}]{_COOKIE_WORDS.get(cookie, cookie)}[/{style}]",
            "\n".join(str(w) for w in warnings) or "nothing",
        )
    console.print(table)


@pixel_app.command("enable-aam")
def enable_aam_command(
    config: ConfigOpt = None,
    pixel: PixelOpt = None,
    fields: Annotated[
        str | None,
        typer.Option(
            "--fields",
            help=f"Comma-separated fields (default: all of {','.join(AAM_FIELDS)}).",
        ),
    ] = None,
) -> None:
    """Turn Automatic Advanced Matching on (all fields unless --fields names some)."""
    chosen = list(AAM_FIELDS) if fields is None else [f.strip() for f in fields.split(",") if f]
    unknown = [f for f in chosen if f not in AAM_FIELDS]
    if unknown or not chosen:
        error(
            f"--fields: unknown field(s) {', '.join(unknown) or '(none given)'}; "
            f"Meta accepts {','.join(AAM_FIELDS)}"
        )
        raise typer.Exit(2)
    _update(
        config,
        pixel,
        f"Automatic Advanced Matching on for {', '.join(chosen)}",
        enable_automatic_matching=True,
        automatic_matching_fields=chosen,
    )


@pixel_app.command("first-party-cookies")
def first_party_cookies_command(
    state: Annotated[str, typer.Argument(help="on or off")],
    config: ConfigOpt = None,
    pixel: PixelOpt = None,
) -> None:
    """Let the Pixel set its first-party _fbp/_fbc cookies (on) or stop it (off)."""
    if state not in ("on", "off"):
        err_console.print("[red]STATE must be on or off[/red]")
        raise typer.Exit(2)
    status = COOKIE_ENABLED if state == "on" else COOKIE_DISABLED
    _update(config, pixel, f"first_party_cookie_status {status}", first_party_cookie_status=status)


def _update(config: Path | None, pixel: str | None, what: str, **changes: object) -> None:
    settings = _settings(config)
    failed = False
    for pixel_id, token, secret in _targets(settings, pixel):
        with _client(settings, pixel_id, secret) as client:
            try:
                client.update_pixel_settings(pixel_id, access_token=token, **changes)  # type: ignore[arg-type]
            except GraphError as err:
                failed = True
                error(f"pixel {pixel_id}: {explain_settings_error(err, pixel_id)}")
                continue
        console.print(f"pixel {pixel_id}: {what}")
    if failed:
        raise typer.Exit(1)
