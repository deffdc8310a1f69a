"""A stable digest of a step's call, for loop detection (``SessionBudget(max_repeats=N)``).

Two calls are "the same call" when their digests are equal. The digest is a SHA-256 over a
canonical JSON form of ``[step name, positional arguments, keyword arguments]`` (or of
``[step name, key(*args, **kwargs)]`` when the decorator has ``key=``), so it does not depend
on ``repr``, on object identity or on the process: equal values give equal digests in every
worker of a shared session.

The canonical form:

- ``None``, ``bool``, ``int``, ``str``: themselves; ``float``: its ``repr`` (so ``1.0`` and
  ``1`` differ, as their types do); ``Decimal``: its string;
- ``bytes``/``bytearray``: hex; ``list``/``tuple``: lists (tagged, so ``(1,)`` and ``[1]``
  differ); ``dict``: its items sorted by their canonical keys; ``set``/``frozenset``: sorted
  canonical members;
- dataclass instances and ``Enum`` members: by type name and fields / value.

Anything else (an open file, a client object, a lambda) cannot be compared by value: a call
with such an argument gets a digest of its own, **never equal** to another call's, so no loop
is detected on it (pass ``key=`` to choose what counts). The same holds for arguments nested
deeper than :data:`MAX_DEPTH`. Arguments are digested in full, never truncated (a prefix could
make two different calls look alike and stop a healthy run); the cost is linear in their size,
so for large arguments pass a ``key=`` that picks the part that matters.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import warnings
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_DEPTH", "call_digest", "key_digest"]

#: Arguments nested deeper than this are not compared (the call is never equal to another).
MAX_DEPTH = 64


class _UnequalError(Exception):
    """An argument that cannot be compared by value."""


def _canon(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _UnequalError
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if abs(value) < 2**53 else ["int", str(value)]
    if t is float:
        return ["float", repr(value)]
    if t is Decimal:
        return ["decimal", str(value)]
    if t is bytes or t is bytearray:
        return ["bytes", value.hex()]
    if t is list or t is tuple:
        return [t.__name__, [_canon(v, depth + 1) for v in value]]
    if t is dict:
        items = [(_key(k, depth), _canon(v, depth + 1)) for k, v in value.items()]
        return ["dict", sorted(items, key=lambda kv: kv[0])]
    if t is set or t is frozenset:
        return ["set", sorted(_key(v, depth) for v in value)]
    if isinstance(value, enum.Enum):
        return ["enum", f"{t.__module__}.{t.__qualname__}", _canon(value.value, depth + 1)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dataclass", f"{t.__module__}.{t.__qualname__}", _canon(fields, depth + 1)]
    raise _UnequalError


def _key(value: Any, depth: int) -> str:
    """A canonical value as a string that sorts (dict keys, set members)."""
    return json.dumps(_canon(value, depth + 1), separators=(",", ":"), ensure_ascii=False)


def call_digest(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The digest of one call of step ``name``: 32 hex digits, equal for equal calls; a call
    with an argument that cannot be compared gets a fresh random one (never equal)."""
    try:
        canonical = json.dumps(
            [name, _canon(args, 0), _canon(kwargs, 0)],
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=True,
        )
    except (_UnequalError, RecursionError, ValueError, TypeError):
        return "u" + os.urandom(16).hex()[:31]
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def key_digest(
    name: str, key: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """The digest of a call of step ``name``: of its arguments, or of ``key(*args,
    **kwargs)`` when the decorator has ``key=``. A ``key`` that raises is warned about and
    the call counts as distinct (the step itself still runs)."""
    if key is None:
        return call_digest(name, args, kwargs)
    try:
        value = key(*args, **kwargs)
    except Exception as exc:
        from .exceptions import BudgetWarning

        warnings.warn(
            f"budgetkit: the key= of step {name!r} raised {type(exc).__name__}; the call "
            "is not compared with others for max_repeats",
            BudgetWarning,
            stacklevel=4,
        )
        return "u" + os.urandom(16).hex()[:31]
    return call_digest(name, (value,), {})
