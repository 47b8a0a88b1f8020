"""``kvmsim diff``: two strategies' decision traces on one scenario, aligned.

Events are compared without what every event carries anyway (``seq`` and the
bound scenario/arch/strategy), so two strategies that take the same decision
line up; :class:`difflib.SequenceMatcher` aligns the rest.  The first row
where they differ is the *first divergence*.
"""

from __future__ import annotations

import difflib
import shutil
from typing import Any

from attrs import define, field

_SKIP = ("seq", "scenario", "arch", "strategy", "vcpu")


def event_text(e: dict[str, Any]) -> str:
    """One event as one line: ``[step] event k=v ...``."""
    step = e.get("step")
    rest = " ".join(f"{k}={v}" for k, v in sorted(e.items()) if k not in (*_SKIP, "event", "step"))
    where = "" if step is None else f"[{step}] "
    return f"{where}{e.get('event')} {rest}".rstrip()


@define
class TraceDiff:
    """The aligned rows (left, right; ``None`` where one side has nothing)."""

    rows: list[tuple[str | None, str | None]] = field(factory=list)
    first: int | None = None  # index in rows of the first divergence

    @property
    def identical(self) -> bool:
        return self.first is None


def align(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> TraceDiff:
    a = [event_text(e) for e in left]
    b = [event_text(e) for e in right]
    out = TraceDiff()
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag != "equal" and out.first is None:
            out.first = len(out.rows)
        la, lb = a[i1:i2], b[j1:j2]
        for k in range(max(len(la), len(lb))):
            out.rows.append((la[k] if k < len(la) else None, lb[k] if k < len(lb) else None))
    return out


def _fit(text: str | None, width: int) -> str:
    t = text or ""
    return t if len(t) <= width else t[: width - 1] + "…"


def render(
    scenario: str,
    arch: str,
    sides: list[tuple[str, Any]],
    diff: TraceDiff,
    *,
    width: int | None = None,
) -> str:
    """Side-by-side text: the aligned traces, the divergence marked with
    ``>>``, then each side's step outcomes and verdicts.

    :param sides: ``(strategy, RunReport)`` for the left and the right.
    """
    total = width or shutil.get_terminal_size((200, 40)).columns
    col = max(30, (total - 7) // 2)
    (ln, _), (rn, _) = sides
    lines = [f"{scenario} on {arch}: {ln} (left) vs {rn} (right)"]
    if diff.first is None:
        lines.append("the two decision traces are identical")
    else:
        lines.append(f"first divergence at row {diff.first} (marked >>)")
    lines.append(f"   {_fit(ln, col):<{col}} | {_fit(rn, col)}")
    lines.append(f"   {'-' * col}-+-{'-' * col}")
    for i, (a, b) in enumerate(diff.rows):
        mark = ">> " if i == diff.first else ("   " if a == b else " ~ ")
        sep = "|" if a == b else ("<" if b is None else (">" if a is None else "≠"))
        lines.append(f"{mark}{_fit(a, col):<{col}} {sep} {_fit(b, col)}")
    for name, rep in sides:
        lines.append("")
        lines.append(f"{name}: {'PASSED' if rep.passed else 'FAILED'}")
        for s in rep.steps:
            extra = f"  verdicts={','.join(s.verdicts)}" if s.verdicts else ""
            lines.append(f"  step {s.index:>2} {s.do:<12} {s.outcome or '-'}{extra}")
            for f in s.expect_failures:
                lines.append(f"           expectation failed: {f}")
        for v in rep.verdicts:
            lines.append(f"  verdict {v.name} at step {v.step}: {v.detail}")
        if not rep.verdicts:
            lines.append("  no checker fired")
    return "\n".join(lines) + "\n"
