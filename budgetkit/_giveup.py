"""The ``GIVE_UP`` protocol: a model declines a plan that cannot fit its step budget.

A model that is told its step budget may answer with one line::

    GIVE_UP: plan requires 12 steps, budget is 10.

instead of starting work it cannot finish. :func:`parse_give_up` recognises that line in a
model's text; :func:`give_up_message` builds it (``SessionBudget.check_plan`` uses the same
text as the message of ``BudgetExhausted(reason="plan_exceeds_budget")``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .exceptions import BudgetConfigError, BudgetTypeError

__all__ = ["GIVE_UP_PREFIX", "GiveUp", "give_up_message", "parse_give_up"]

#: The marker that starts a give-up line (case-sensitive).
GIVE_UP_PREFIX = "GIVE_UP:"

# One line: optional indentation and inline backticks (```GIVE_UP: ...``` or `GIVE_UP: ...`),
# the exact marker, the sentence with flexible spacing, an optional final period.
_LINE = re.compile(
    r"^[ \t]*`*[ \t]*GIVE_UP:[ \t]*plan[ \t]+requires[ \t]+(?P<required>[0-9]+)[ \t]+steps?[ \t]*,"
    r"[ \t]*budget[ \t]+is[ \t]+(?P<budget>[0-9]+)[ \t]*\.?[ \t]*`*[ \t]*\r?$",
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A model's declaration that its plan does not fit the step budget.

    .. versionadded:: 0.1.0
    """

    required_steps: int
    """Steps the model says its plan needs (``N``)."""
    budget_steps: int
    """Steps the model says it has (``M``)."""
    line: str
    """The matched line, stripped of surrounding whitespace."""


def parse_give_up(text: str) -> GiveUp | None:
    """Find a ``GIVE_UP: plan requires N steps, budget is M.`` line in a model's text.

    The line must start a line of ``text`` (indentation allowed), also when it sits inside
    a fenced code block or between inline backticks. ``GIVE_UP`` is matched case-sensitively;
    whitespace around and inside the sentence is tolerated, as are ``1 step`` and a missing
    final period. Nothing but whitespace or backticks may follow on the line. The first
    such line wins. ``N`` is not compared with ``M``: the caller decides what a give-up with
    ``N <= M`` means.

    Args:
        text: the model's output.

    Returns:
        The parsed :class:`GiveUp`, or ``None`` when ``text`` has no give-up line.

    Raises:
        BudgetTypeError: ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise BudgetTypeError(f"parse_give_up() takes a str, got {type(text).__name__}")
    if GIVE_UP_PREFIX not in text:  # fast path for the usual answer
        return None
    match = _LINE.search(text)
    if match is None:
        return None
    return GiveUp(
        required_steps=int(match["required"]),
        budget_steps=int(match["budget"]),
        line=match.group(0).strip(),
    )


def give_up_message(required_steps: int, budget_steps: int) -> str:
    """The exact give-up line: ``GIVE_UP: plan requires N steps, budget is M.``.

    Args:
        required_steps: steps the plan needs (``N``), a non-negative int.
        budget_steps: steps the budget allows (``M``), a non-negative int.

    Raises:
        BudgetTypeError: an argument is not an int (``bool`` included).
        BudgetConfigError: an argument is negative.
    """
    for name, value in (("required_steps", required_steps), ("budget_steps", budget_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BudgetTypeError(f"{name} must be an int, got {value!r}")
        if value < 0:
            raise BudgetConfigError(f"{name} must be a non-negative int, got {value!r}")
    return f"{GIVE_UP_PREFIX} plan requires {required_steps} steps, budget is {budget_steps}."
