"""``oops``, ``deadlock``, ``livelock``: the step itself ended that way."""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding

_OUTCOME_VERDICTS = ("oops", "deadlock", "livelock")


def check(ctx: CheckContext) -> Iterator[Finding]:
    if ctx.outcome in _OUTCOME_VERDICTS:
        yield Finding(ctx.outcome, ("outcome", id(ctx)), ctx.detail or ctx.outcome)
