"""Small pieces of the sentences capirelay writes for people (logs, CLI output)."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, noun: str) -> str:
    """``1 event``, ``3 events``: ``count`` with ``noun``, plural with an ``s`` unless one."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
