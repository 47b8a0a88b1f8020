"""``kvmsim diff``: two strategies' decision traces on one scenario, aligned.

The traces are aligned by what they did, not by position: a sequence
alignment (:class:`difflib.SequenceMatcher`) over each event's step and
name.  Two events with the same step and name share a row (marked ``≠`` when
their fields differ); an event the other side has no counterpart for gets a
row of its own (``<`` left only, ``>`` right only), so one inserted event
shifts nothing after it.  The first row where the sides differ is the *first
divergence*.  Values are spelt by :mod:`kvmsim.report.fields` (hex
addresses, decoded flags, sizes with units); ``seq`` and the bound
scenario/arch/strategy/vcpu are left out, as every event carries them.
"""

from __future__ import annotations

import difflib
import shutil
from typing import Any

from attrs import define, field

from kvmsim.report.fields import format_fields

_SKIP = ("seq", "scenario", "arch", "strategy", "vcpu")


def event_text(e: dict[str, Any]) -> str:
    """One event as one line: ``[step] event k=v ...``."""
    step = e.get("step")
    rest = format_fields(e, (*_SKIP, "event", "step"))
    where = "" if step is None else f"[{step}] "
    return f"{where}{e.get('event')} {rest}".rstrip()


def _what(e: dict[str, Any]) -> tuple[object, object]:
    # what an event did, for the alignment: its step and its name
    return (e.get("step"), e.get("event"))


@define
class TraceDiff:
    """The aligned rows (left, right; ``None`` where one side has nothing)."""

    rows: list[tuple[str | None, str | None]] = field(factory=list)
    first: int | None = None  # index in rows of the first divergence

    @property
    def identical(self) -> bool:
        return self.first is None


def align(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> TraceDiff:
    """Align *left* and *right* by (step, event name); see the module docstring."""
    a = [event_text(e) for e in left]
    b = [event_text(e) for e in right]
    out = TraceDiff()

    def add(x: str | None, y: str | None) -> None:
        if x != y and out.first is None:
            out.first = len(out.rows)
        out.rows.append((x, y))

    sm = difflib.SequenceMatcher(
        None, [_what(e) for e in left], [_what(e) for e in right], autojunk=False
    )
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                add(a[i], b[j])
            continue
        # no counterpart: never pair two events that did different things
        for i in range(i1, i2):
            add(a[i], None)
        for j in range(j1, j2):
            add(None, b[j])
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
