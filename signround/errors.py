"""The project's error types; the command line maps each family to one exit code.

- ``BadInputError`` (exit 2): an argument, path or file the user gave is wrong. The message names the
  culprit (flag, file, tensor, layer) and, where there is one, what to do instead. It subclasses
  ``ValueError`` so existing ``except ValueError`` callers keep working.
- ``CheckFailedError`` (exit 1): the work ran but a check of its result failed (``signround verify``).

Anything else is a bug in signround and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["SignroundError", "BadInputError", "OutputPathError", "CheckFailedError", "EXIT_BAD_INPUT",
           "EXIT_CHECK_FAILED"]

EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 1


class SignroundError(Exception):
    """Base of every error signround raises on purpose."""


class BadInputError(SignroundError, ValueError):
    """Something the user gave (argument, path, file, tensor) is wrong; found before any work where possible."""


class OutputPathError(BadInputError):
    """The output location cannot be written, or writing it would replace something signround did not create."""


class CheckFailedError(SignroundError):
    """A verification ran and found a disagreement."""
