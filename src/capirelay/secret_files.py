"""Secrets on disk: written once with mode 0600, read by :class:`capirelay.config.Secret`.

``capirelay init`` and ``capirelay demo`` generate credentials (ingest keys, the
dashboard token) and keep them out of the TOML file: each goes to its own file
that only the owner can read, and the config refers to it as
``{ file = "..." }``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

__all__ = ["new_token", "toml_string", "write_secret"]


def new_token() -> str:
    """A fresh random credential (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def write_secret(path: Path, value: str) -> Path:
    """Write ``value`` to ``path`` with mode 0600 (its new directory 0700); returns ``path``.

    The file is created with the restrictive mode from the start, never widened,
    so the secret is not readable by others even for a moment.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode otherwise
        os.write(fd, (value + "\n").encode("utf-8"))
    finally:
        os.close(fd)
    return path


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)
