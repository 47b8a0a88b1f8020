"""Errors kvmsim reports to its users.

Every user-facing failure is a :class:`KvmsimError` carrying structured fields,
so the CLI can print one clear line (never a traceback) and exit 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean a, b, c?"`` for the (up to three) choices close to
    ``name``, or ``""``: the hint every unknown-name error carries."""
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


class KvmsimError(Exception):
    """Base of every error kvmsim reports to a user.

    :param message: what was wrong, in one sentence.
    :param file: the file the problem is in, if any.
    :param key: the key path inside that file (``step[3].gpa``), if any.
    :param expected: what was expected there, if that helps.
    :param got: what was found there, if that helps.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        expected: str | None = None,
        got: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key
        self.expected = expected
        self.got = got

    def __str__(self) -> str:
        where = ""
        if self.file and self.key:
            where = f"{self.file}: {self.key}: "
        elif self.file:
            where = f"{self.file}: "
        elif self.key:
            where = f"{self.key}: "
        text = where + self.message
        if self.expected is not None:
            text += f" (expected {self.expected}"
            if self.got is not None:
                text += f", got {self.got!r}"
            text += ")"
        return text


class ScenarioError(KvmsimError):
    """A scenario file is malformed or inconsistent."""


class PluginError(KvmsimError):
    """A plugin could not be found, loaded, or does not fit the selection."""


class UsageError(KvmsimError):
    """A command-line argument is wrong."""
