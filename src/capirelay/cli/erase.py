"""``capirelay erase --email ... | --phone ... | --external-id ...``: honour a deletion request.

The value is normalized and hashed exactly as ingest does (a phone number once per
default country configured, since ``+1 650...`` and ``(650)...`` only hash alike with
the right country), and every queued event, dead letter and receipt carrying one of
those hashes is removed from the configured storage (``--pixel`` limits it to one
pixel).  What was removed is printed, and an audit record of the request (the
identifier's field and SHA-256, time, counts; never the value) is kept in storage.
Events already delivered to Meta are Meta's to erase; an event being sent at this
very moment may still arrive there.  Exit 0 on success (also when nothing matched),
2 on a usage or configuration error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer
from rich.console import Console

from capirelay.cli._output import err_console, error
from capirelay.cli.storage import ConfigOpt, StorageOpt, existing_storage_url
from capirelay.config import redact_storage_url
from capirelay.outbox.receipts import ErasureResult

__all__ = ["erase_command", "erasure_hashes"]

console = Console(soft_wrap=True)

ValuesOpt = list[str] | None


def erasure_hashes(
    emails: list[str], phones: list[str], external_ids: list[str], countries: set[str | None]
) -> dict[str, set[str]]:
    """Wire key -> the SHA-256 digests ingest would have stored for these values, today
    and under earlier releases' rules (:func:`capirelay.normalize.earlier_hashes`), each
    a bare digest (a param builder's value given here loses its appendix: stored values
    are compared by their digest).

    Raises ``ValueError`` naming the option when a value cannot be normalized.
    """
    from capirelay.normalize import (
        NormalizationError,
        digest_of,
        earlier_hashes,
        hash_field,
        resolve_country,
    )

    hashes: dict[str, set[str]] = {}
    for option, key, values, hinted in (
        ("--email", "em", emails, False),
        ("--phone", "ph", phones, True),
        ("--external-id", "external_id", external_ids, False),
    ):
        for value in values:
            found: set[str] = set()
            reason = ""
            for country in sorted(countries, key=str) if hinted else [None]:
                try:
                    found.add(digest_of(hash_field(key, value, country=country)))
                except NormalizationError as exc:
                    reason = exc.reason
                region = resolve_country(country) if country is not None else None
                found.update(earlier_hashes(key, value, region))
            if not found:
                raise ValueError(f"{option}: {reason}")
            hashes.setdefault(key, set()).update(found)
    return hashes


def erase_command(
    email: Annotated[ValuesOpt, typer.Option("--email", help="An email address.")] = None,
    phone: Annotated[ValuesOpt, typer.Option("--phone", help="A phone number.")] = None,
    external_id: Annotated[
        ValuesOpt, typer.Option("--external-id", help="Your customer id (external_id).")
    ] = None,
    pixel: Annotated[str | None, typer.Option("--pixel", help="Only this pixel.")] = None,
    config: ConfigOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Erase a person's queued and dead-lettered events and receipts (hashes only)."""
    from capirelay.config import ConfigError, load_settings
    from capirelay.normalize import is_sha256

    if not (email or phone or external_id):
        err_console.print("[red]name the person: --email, --phone or --external-id[/red]")
        raise typer.Exit(2)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    if pixel is not None and pixel not in settings.pixels:
        error(f"pixel {pixel} is not configured; check --pixel")
        raise typer.Exit(2)
    pixels = [settings.pixels[pixel]] if pixel else list(settings.pixels.values())
    countries: set[str | None] = {p.default_country for p in pixels} | {None}
    try:
        hashes = erasure_hashes(email or [], phone or [], external_id or [], countries)
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    # SHA-256 digests only: the search also holds what an earlier release stored as is (a
    # 32-hex external_id passed through), the very id being erased, and the audit outlives
    # the erasure (a reviewer's find).
    audit = sorted(
        (key, digest) for key, digests in hashes.items() for digest in digests if is_sha256(digest)
    )
    # A missing SQLite file is said and nothing is created: an empty new database "erased"
    # nothing and reported success to a user in the wrong directory or with the wrong config.
    url = existing_storage_url(config, storage)
    try:
        result = asyncio.run(_erase(url, hashes, pixel, audit))
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    where = f"pixel {pixel}" if pixel else "every pixel"
    console.print(
        f"erased from {where}: {result.queued} queued events, {result.dead_letters} dead "
        f"letters, {result.receipts} receipts"
    )
    console.print(
        "audit record kept (" + ", ".join(f"{key} sha256 {d[:12]}…" for key, d in audit) + ")"
    )


async def _erase(
    url: str, hashes: dict[str, set[str]], pixel: str | None, audit: list[tuple[str, str]]
) -> ErasureResult:
    from capirelay.outbox import ErasureStore, open_outbox

    outbox = open_outbox(url)
    if not isinstance(outbox, ErasureStore):
        raise ValueError(
            f"storage {redact_storage_url(url)!r} cannot erase identifiers: point --storage "
            "(or storage in capirelay.toml) at the SQLite or PostgreSQL outbox the gateway "
            "writes"
        )
    await outbox.open()
    try:
        return await outbox.erase(hashes, pixel_id=pixel, now=time.time(), audit=audit)
    finally:
        await outbox.close()
