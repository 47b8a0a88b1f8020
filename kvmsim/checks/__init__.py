"""Invariant checkers: after every step each looks at the host, KVM and
arch state and returns findings; the runner turns them into verdicts.

A checker is a function ``check(ctx) -> Iterable[Finding]``.  A finding's
``key`` identifies the object at fault (a pfn, a gpa) so that a condition
that persists over several steps is reported once, at the step that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kvmsim.checks import cache, frames, locks, outcome, perms, poison, refcount, stale
from kvmsim.checks.context import CheckContext, Finding

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
)

VERDICT_NAMES = (
    "wrong_frame",
    "stale_mapping",
    "refcount_leak",
    "refcount_underflow",
    "lock_leak",
    "deadlock",
    "oops",
    "livelock",
    "write_to_readonly",
    "poison_mapped",
    "cache_attr_mismatch",
    "outside_memslot",
)

__all__ = ["CHECKERS", "VERDICT_NAMES", "CheckContext", "Checker", "Finding", "run_checks"]


def run_checks(ctx: CheckContext) -> list[Finding]:
    """Every checker over one state, in a fixed order."""
    out: list[Finding] = []
    for checker in CHECKERS:
        out.extend(checker(ctx))
    return out
