"""Warnings that point at the user's line, not at budgetkit's (or wrapt's) internals."""

from __future__ import annotations

import inspect
import os
import warnings

import wrapt

#: Frames in these folders are not the user's: budgetkit itself and the wrapper it uses.
_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(wrapt.__file__)) + os.sep,
)


def is_internal(filename: str) -> bool:
    """Whether code in ``filename`` is budgetkit's or wrapt's, not the user's."""
    return filename.startswith(_INTERNAL)


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` at the first frame outside budgetkit and wrapt: the user's line."""
    frame = inspect.currentframe()
    level = 1
    while frame is not None and is_internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
