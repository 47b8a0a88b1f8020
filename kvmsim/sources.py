"""Where a modelled kernel version was read: every fault-handler and
strategy module's docstring carries one paragraph starting with
``Read from:`` naming the tree and commit (or release tarball, or stable
patch) its decisions were taken from, and what was checked there.  The
paragraph runs to the next blank line.  Plugins hand it on through
``ArchInfo.handler_sources`` and ``StrategyInfo.source``; docs/strategies.md
tabulates it, and a test fails when a module has none.
"""

from __future__ import annotations

READ_FROM = "Read from:"


def read_from(doc: str | None) -> str:
    """The text of the ``Read from:`` paragraph of ``doc`` (lines joined by
    one space), or ``""`` when there is none."""
    if not doc:
        return ""
    out: list[str] = []
    for line in doc.splitlines():
        text = line.strip()
        if out:
            if not text:
                break
            out.append(text)
        elif text.startswith(READ_FROM):
            out.append(text[len(READ_FROM) :].strip())
    return " ".join(out)
