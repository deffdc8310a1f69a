"""Budgets from configuration: named tiers, files and environment variables.

A *tier* is a named set of ``SessionBudget`` keyword arguments. :func:`load_tier` resolves
one in this order, later sources winning:

1. the built-in presets (:data:`PRESETS`);
2. a file tier of the same name, which *replaces* the preset as a whole: ``[tiers.<name>]``
   in ``budgetkit.toml`` or ``[tool.budgetkit.tiers.<name>]`` in ``pyproject.toml``;
3. the ``BUDGETKIT_MAX_*`` environment variables (:data:`ENV_VARS`), one limit each.

The presets come from the calibration table of typical agent runs (qa: 5-10 turns / $0.10,
research: 15-25 / $0.50, analysis: 30-50 / $1-2, long: 50-100 / $2-5); each preset takes the
top of its range, so a run that is typical for its kind is not stopped.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._agent_view import check_fraction, check_fractions
from ._limits import LIMIT_NAMES, to_usd
from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CONFIG_FILES",
    "ENV_VARS",
    "PRESETS",
    "TIER_KEYS",
    "known_tiers",
    "limits_from_env",
    "load_tier",
]

#: The built-in tiers: the top of each range of the calibration table.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "qa": MappingProxyType({"max_steps": 10, "max_usd": Decimal("0.10")}),
        "research": MappingProxyType({"max_steps": 25, "max_usd": Decimal("0.50")}),
        "analysis": MappingProxyType({"max_steps": 50, "max_usd": Decimal("2.00")}),
        "long": MappingProxyType({"max_steps": 100, "max_usd": Decimal("5.00")}),
    }
)

#: Files searched, in this order, when no path is given; the first that defines a tier wins.
CONFIG_FILES = ("budgetkit.toml", "pyproject.toml")

#: Environment variable -> SessionBudget keyword.
ENV_VARS: Mapping[str, str] = MappingProxyType(
    {f"BUDGETKIT_{name.upper()}": name for name in LIMIT_NAMES}
)

#: The chain caps a tier may set (kept across resumes; see ``SessionBudget``).
CHAIN_KEYS = ("max_total_usd", "max_total_steps", "max_sessions")

_USD_KEYS = frozenset({"max_usd", "max_total_usd"})
_INT_KEYS = frozenset({*LIMIT_NAMES, *CHAIN_KEYS}) - _USD_KEYS - {"max_seconds"}

#: Keys a tier may set.
TIER_KEYS = frozenset(
    {*LIMIT_NAMES, *CHAIN_KEYS, "thresholds", "reserve_for_wrapup", "on_unknown_cost"}
)


def load_tier(
    tier: str,
    *,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``SessionBudget`` keyword arguments of a named tier.

    Usage: ``SessionBudget(**load_tier("research"))``.

    Args:
        tier: the tier's name (a preset such as ``"qa"``, or one defined in a file).
        path: a ``budgetkit.toml`` or ``pyproject.toml`` (``[tool.budgetkit.tiers.*]``) file,
            or a directory holding them. By default the current directory is searched for
            ``budgetkit.toml`` then ``pyproject.toml``; missing files are skipped.
        environ: the environment for the ``BUDGETKIT_MAX_*`` overrides; default
            ``os.environ``. Pass ``{}`` to ignore the environment.

    Returns:
        The keyword arguments that are set: ``max_*`` limits (ints, ``Decimal`` for
        ``max_usd``, ``float`` for ``max_seconds``), the chain caps ``max_total_usd``
        (``Decimal``), ``max_total_steps`` and ``max_sessions``, ``thresholds`` (list of
        floats), ``reserve_for_wrapup`` (float) and ``on_unknown_cost``. USD amounts may be
        written as decimal strings (``max_usd = "0.25"``), kept exact. Every value is checked
        by the rules ``SessionBudget`` applies, so what loads also builds a session.

    Raises:
        BudgetConfigError: unknown tier (the message lists the known ones), unknown key,
            bad value, TOML syntax error (naming file and line), missing ``path``, or an
            unparseable environment variable (naming it and its value).
        BudgetTypeError: a value of the wrong type; the message names file, tier and key.
    """
    if not isinstance(tier, str):
        raise BudgetTypeError(f"tier must be a str, got {tier!r}")
    found: dict[str, Any] | None = None
    documents = _documents(path)
    for file, doc in documents:
        table = _tiers_table(file, doc)
        if tier in table:
            found = _validate_tier(file, tier, table[tier])
            break
    if found is None:
        if tier not in PRESETS:
            names = set(PRESETS)
            for file, doc in documents:
                names.update(_tiers_table(file, doc))
            searched = ", ".join(str(file) for file, _ in documents) or "no configuration file"
            raise BudgetConfigError(
                f"unknown budget tier {tier!r}; known tiers: {', '.join(sorted(names))} "
                f"(read: {searched})"
            )
        found = dict(PRESETS[tier])
    found.update(limits_from_env(environ))
    return found


def known_tiers(*, path: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the presets and of the tiers defined in the configuration files, sorted.

    Args:
        path: as for :func:`load_tier`.
    """
    names = set(PRESETS)
    for file, doc in _documents(path):
        names.update(_tiers_table(file, doc))
    return sorted(names)


def limits_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Limits set by ``BUDGETKIT_MAX_*`` environment variables (see :data:`ENV_VARS`).

    ``BUDGETKIT_MAX_USD`` is read as a ``Decimal``, ``BUDGETKIT_MAX_SECONDS`` as a float and
    the others as ints (``1_000`` allowed). Unset or empty variables are skipped.

    Args:
        environ: the environment; default ``os.environ``.

    Returns:
        ``{keyword: value}`` for the variables that are set.

    Raises:
        BudgetConfigError: a value that does not parse or is not positive; the message names
            the variable and its value.
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for var, key in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        text = raw.strip()
        value: int | float | Decimal | None
        if key == "max_usd":
            try:
                value = Decimal(text)
            except InvalidOperation:
                value = None
            if value is not None and (not value.is_finite() or value <= 0):
                value = None
            what = "a positive number of US dollars"
            if value is not None:
                try:
                    value = to_usd(value, var, limit=True)
                except BudgetConfigError as exc:  # out of bounds: at most 1E+15, at least 1E-30
                    raise BudgetConfigError(
                        f"environment variable {var}={raw!r} is out of bounds: {exc}"
                    ) from None
        elif key == "max_seconds":
            try:
                value = float(text)
            except ValueError:
                value = None
            if value is not None and (not math.isfinite(value) or value <= 0):
                value = None
            what = "a positive number of seconds"
        else:
            try:
                value = int(text)
            except ValueError:
                value = None
            if value is not None and value <= 0:
                value = None
            what = "a positive integer"
        if value is None:
            raise BudgetConfigError(f"environment variable {var}={raw!r} is not {what}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------- files
def _documents(path: str | os.PathLike[str] | None) -> list[tuple[Path, dict[str, Any]]]:
    """The parsed configuration files to look in, in order."""
    if path is None:
        candidates = [Path(name) for name in CONFIG_FILES]
        return [(p, _read(p)) for p in candidates if p.is_file()]
    if not isinstance(path, str | os.PathLike):
        raise BudgetTypeError(f"path must be a file or directory path, got {path!r}")
    given = Path(path)
    if given.is_dir():
        candidates = [given / name for name in CONFIG_FILES]
        return [(p, _read(p)) for p in candidates if p.is_file()]
    return [(given, _read(given))]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BudgetConfigError(
            f"cannot read budget configuration {str(path)!r}: {exc.strerror or exc}"
        ) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BudgetConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)  # Python 3.14+
        if line is None:
            found = re.search(r"at line (\d+)", str(exc))
            line = int(found[1]) if found else None
        where = f"{path}, line {line}" if line is not None else str(path)
        raise BudgetConfigError(f"{where}: invalid TOML: {exc}") from None


def _is_pyproject(path: Path) -> bool:
    return path.name == "pyproject.toml"


def _tiers_table(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """``[tiers]`` of budgetkit.toml or ``[tool.budgetkit.tiers]`` of pyproject.toml."""
    if _is_pyproject(path):
        where = "[tool.budgetkit.tiers]"
        tool = doc.get("tool", {})
        section = tool.get("budgetkit", {}) if isinstance(tool, dict) else {}
        table = section.get("tiers", {}) if isinstance(section, dict) else {}
    else:
        where = "[tiers]"
        table = doc.get("tiers", {})
    if not isinstance(table, dict):
        raise BudgetConfigError(f"{path}: {where} must be a table, got {table!r}")
    return table


def _validate_tier(path: Path, tier: str, values: object) -> dict[str, Any]:
    prefix = "tool.budgetkit.tiers" if _is_pyproject(path) else "tiers"
    if not isinstance(values, dict):
        raise BudgetConfigError(
            f"{_where(path, tier, None)}: [{prefix}.{tier}] must be a table, got {values!r}"
        )
    out: dict[str, Any] = {}
    for key, value in values.items():
        where = _where(path, tier, key)
        if key not in TIER_KEYS:
            close = difflib.get_close_matches(key, sorted(TIER_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            allowed = ", ".join(sorted(TIER_KEYS))
            raise BudgetConfigError(f"{where}: unknown key {key!r}{hint}; allowed keys: {allowed}")
        out[key] = _check_value(where, key, value)
    return out


def _where(path: Path, tier: str, key: str | None) -> str:
    """``file[:line]: tier 'x'[, key 'k']`` (the line is found on a best-effort basis)."""
    line = _key_line(path, tier, key)
    location = f"{path}:{line}" if line else str(path)
    text = f"{location}: tier {tier!r}"
    return text if key is None else f"{text}, key {key!r}"


def _key_line(path: Path, tier: str, key: str | None) -> int | None:
    """The line of ``key`` in the tier's ``[..tiers.<tier>]`` section, if it can be found."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):  # pragma: no cover - the file was just parsed
        return None
    name = rf"(?:{re.escape(tier)}|\"{re.escape(tier)}\"|'{re.escape(tier)}')"
    header = re.compile(
        rf"^\s*\[\s*(?:tool\s*\.\s*budgetkit\s*\.\s*)?tiers\s*\.\s*{name}\s*\]\s*(?:#.*)?$"
    )
    any_header = re.compile(r"^\s*\[")
    for index, text in enumerate(lines):
        if header.match(text):
            if key is None:
                return index + 1
            key_line = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
            for offset, later in enumerate(lines[index + 1 :], start=index + 2):
                if any_header.match(later):
                    break
                if key_line.match(later):
                    return offset
            return None
    return None


def _check_value(where: str, key: str, value: object) -> Any:
    """One tier value, checked by the same rules as ``SessionBudget`` (so nothing the loader
    accepts is refused later without a location); every message starts with ``where``."""
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BudgetTypeError(f"{where}: must be a positive integer, got {value!r}")
        if value <= 0:
            raise BudgetConfigError(f"{where}: must be a positive integer, got {value!r}")
        return value
    if key in _USD_KEYS:
        return _usd_value(where, key, value)
    if key == "max_seconds":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BudgetTypeError(f"{where}: must be a positive number of seconds, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise BudgetConfigError(
                f"{where}: must be a positive, finite number of seconds, got {value!r}"
            )
        return float(value)
    if key == "thresholds":
        if not isinstance(value, list):
            raise BudgetTypeError(
                f"{where}: must be a list of fractions such as [0.5, 0.8], got {value!r}"
            )
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise BudgetTypeError(f"{where}: every threshold must be a number, got {item!r}")
        try:
            return list(check_fractions(value, "every threshold"))
        except BudgetConfigError as exc:
            raise BudgetConfigError(f"{where}: {exc}") from None
    if key == "reserve_for_wrapup":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BudgetTypeError(f"{where}: must be a fraction such as 0.1, got {value!r}")
        try:
            return check_fraction(value, "reserve_for_wrapup")
        except BudgetConfigError as exc:
            raise BudgetConfigError(f"{where}: {exc}") from None
    # on_unknown_cost
    if not isinstance(value, str):
        raise BudgetTypeError(f"{where}: must be 'warn' or 'error', got {value!r}")
    if value not in ("warn", "error"):
        raise BudgetConfigError(f"{where}: must be 'warn' or 'error', got {value!r}")
    return value


def _usd_value(where: str, key: str, value: object) -> Decimal:
    """A USD amount from a file: a number, or a decimal string (``"0.25"``, kept exact)."""
    if isinstance(value, str):
        try:
            amount = Decimal(value.strip().replace("_", "")) if value.strip() else None
        except InvalidOperation:
            amount = None
        if amount is None:
            raise BudgetConfigError(
                f"{where}: must be a positive number of US dollars or a decimal string "
                f'such as "0.25", got {value!r}'
            )
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise BudgetTypeError(
            f"{where}: must be a positive number of US dollars or a decimal string "
            f'such as "0.25", got {value!r}'
        )
    else:
        amount = Decimal(str(value))
    if not amount.is_finite() or amount <= 0:
        raise BudgetConfigError(
            f"{where}: must be a positive, finite number of US dollars, got {value!r}"
        )
    try:
        return to_usd(amount, key, limit=True)
    except BudgetConfigError as exc:  # out of bounds: at most 1E+15, at least 1E-30
        raise BudgetConfigError(f"{where}: {exc}") from None
