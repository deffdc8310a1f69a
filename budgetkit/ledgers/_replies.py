"""Redis replies as text (redis-py returns ``bytes`` unless the client decodes responses)."""

from __future__ import annotations

from typing import Any

__all__ = ["text"]


def text(value: Any) -> str:
    """A reply (``bytes``, ``str`` or a number) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)
