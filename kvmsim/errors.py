"""Errors kvmsim reports to its users.

Every user-facing failure is a :class:`KvmsimError` carrying structured fields,
so the CLI can print one clear line (never a traceback) and exit 2.
"""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean a, b, c?"`` for the (up to three) choices close to
    ``name``, or ``""``: the hint every unknown-name error carries."""
    import difflib  # only on the error path: not imported at start-up

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


class HookResultError(KvmsimError):
    """A plugin's hook returned a value of the wrong type: a plugin bug,
    blamed on the plugin that returned it where the value crossed the hook
    boundary, not on whichever code used it next (exit 3, like a raise).

    :param hook: the hook's name.
    :param plugins: who implements the hook (``strategy:generic_v4_16``);
        for a single implementation, the culprit.
    :param got: the value returned.
    :param expected: the type the hook's spec promises.
    """

    exit_code = 3

    def __init__(self, hook: str, plugins: Iterable[str], got: object, expected: str) -> None:
        names = [p.replace(":", " ") for p in plugins]
        who = (
            f"plugin {names[0]}"
            if len(names) == 1
            else f"one of the plugins {', '.join(names) or '(none)'}"
        )
        super().__init__(
            f"{who} returned {type(got).__name__} {_short(got)} from hook {hook}, "
            f"expected {expected}"
        )
        self.hook = hook
        self.plugins = tuple(plugins)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
