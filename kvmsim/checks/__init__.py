"""Invariant checkers: after every step each looks at the host, KVM and
arch state and returns findings; the runner turns them into verdicts.

A checker is a function ``check(ctx) -> Iterable[Finding]``.  A finding's
``key`` identifies the object at fault (a pfn, a gpa) so that a condition
that persists over several steps is reported once, at the step that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kvmsim.checks import (
    cache,
    frames,
    locks,
    lostdirty,
    outcome,
    perms,
    poison,
    refcount,
    stale,
)
from kvmsim.checks.context import CheckContext, Finding
from kvmsim.scenario.model import VERDICTS

Checker = Callable[[CheckContext], Iterable[Finding]]

CHECKERS: tuple[Checker, ...] = (
    outcome.check,
    locks.check,
    refcount.check,
    frames.check,
    stale.check,
    perms.check,
    poison.check,
    cache.check,
    lostdirty.check,
)

# The stable verdict names are the scenario schema's (expect.verdicts).
VERDICT_NAMES = VERDICTS

__all__ = ["CHECKERS", "VERDICT_NAMES", "CheckContext", "Checker", "Finding", "run_checks"]


def run_checks(ctx: CheckContext) -> list[Finding]:
    """Every checker over one state, in a fixed order."""
    out: list[Finding] = []
    for checker in CHECKERS:
        out.extend(checker(ctx))
    return out
