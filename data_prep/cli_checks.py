"""Checks on the data CLIs' arguments, made before anything is written.

A count that cannot be right (a negative number of examples, a subset larger than its pool) is refused
with one message naming the flag, the value and what is valid; the CLIs print it without a traceback
(`trainer.errors.report`) and exit 2. docs/errors.md lists the cases.
"""

from __future__ import annotations

from trainer.errors import UserError


class ArgumentError(UserError, ValueError):
    """A command-line value out of range: the message names the flag, the value and what is valid."""


def require_count(flag: str, value: int | None, what: str, minimum: int = 1) -> None:
    """Refuse `value` below `minimum` (None: the option was not given, nothing to check)."""
    if value is not None and value < minimum:
        raise ArgumentError(f"{flag} {value}: {what} must be a whole number >= {minimum}")
