"""Every citation a user sees resolves (issue 22, item 2).

A citation is either a section of docs/kernel-notes.md, written ``§X.n``
(``kernel-notes §J.5``, or a Markdown link to ``kernel-notes.md#J.5``), or a
kernel function with its version or commit.  Section letters of a document
the repository does not ship (the old ``J.5`` / ``kernel-semantics`` form)
resolve to nothing and fail here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from kvmsim.scenario import builtin_scenarios

ROOT = Path(__file__).resolve().parents[2]
NOTES = ROOT / "docs" / "kernel-notes.md"
EXAMPLE_SCENARIOS = sorted((ROOT / "examples").glob("*/*/scenarios/*.toml"))
SCENARIOS = builtin_scenarios() + EXAMPLE_SCENARIOS
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
DOCS += sorted((ROOT / "examples").glob("*/README.md"))

_SECTION = r"[A-Z](?:\.\d+[ab]?)?"
_CITED = re.compile(rf"§({_SECTION})(?![\w.]*\d)")
_LINKED = re.compile(rf"kernel-notes\.md#({_SECTION})\b")
# a section letter with no §: the old citations of an unshipped document
_BARE = re.compile(r"(?<![§\w.`/#\[\"-])([A-L]\.\d+[ab]?)\b")
_VERSION = re.compile(r"\bv\d+\.\d+|\b[0-9a-f]{12}\b")


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', NOTES.read_text()))


def unresolved(text: str, known: set[str]) -> list[str]:
    """The citations in *text* that point to nothing."""
    bad = [f"§{s}" for s in _CITED.findall(text) if s not in known]
    bad += [f"#{s}" for s in _LINKED.findall(text) if s not in known]
    bad += [f"bare {s}" for s in _BARE.findall(text)]
    if "kernel-semantics" in text:
        bad.append("kernel-semantics (not in the repository)")
    return bad


def test_the_checker_catches_what_it_should() -> None:
    known = {"J.5", "L.1"}
    assert unresolved("kernel-notes §J.5: x (§L.1)", known) == []
    assert unresolved("J.5: the old form", known) == ["bare J.5"]
    assert unresolved("kernel-notes §J.9 step 2", known) == ["§J.9"]
    assert unresolved("[§Q.1](kernel-notes.md#Z.1)", known) == ["§Q.1", "#Z.1"]
    assert unresolved("see kernel-semantics L.1", known)
    assert unresolved("v4.15 and 0x6_0000 and a B.S. degree", known) == []


def test_every_note_names_a_kernel_function_and_version() -> None:
    text = NOTES.read_text()
    headings = re.findall(r'<a id="([A-L]\.\d+)"></a>\n### (.*)', text)
    assert len(headings) > 50
    for section, heading in headings:
        # the function, and the version or commit, in the heading itself
        assert "`" in heading or "DSISR" in heading, f"§{section} names no function: {heading}"
        assert _VERSION.search(heading), f"§{section} names no version or commit: {heading}"


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_citations_resolve(path: Path) -> None:
    known = anchors()
    raw = path.read_text()
    doc = tomllib.loads(raw)
    assert unresolved(raw, known) == []
    for i, k in enumerate(doc.get("known", [])):
        reason = k["reason"]
        cites = _CITED.findall(reason)
        # a section of the notes, or a kernel function with version/commit
        assert cites or _VERSION.search(reason), f"known[{i}] cites nothing: {reason}"
        if cites:
            assert "kernel-notes §" in reason, f"known[{i}]: say where § points"
    if _CITED.search(doc.get("description", "")):
        assert "kernel-notes §" in doc["description"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_citations_resolve(path: Path) -> None:
    text = path.read_text()
    if path == NOTES:  # its own headings define the sections
        text = re.sub(r"^(#+ )[A-L]\.\d+[ab]?", r"\1", text, flags=re.M)
    assert unresolved(text, anchors()) == []
    if _CITED.search(text) and path != NOTES:
        assert "kernel-notes" in text, f"{path.name} cites § without naming kernel-notes"


def test_matrix_and_suggestions_show_no_unresolved_citation() -> None:
    from kvmsim.matrix import plan, run
    from kvmsim.report import render
    from kvmsim.report.commands import suggest_known

    res = run(plan(scenarios=["gen-anon-read-first-touch"], arches=["ppc_radix"]), jobs=1)
    for fmt in ("table", "json", "html"):
        assert unresolved(render(res, fmt), anchors()) == [], fmt
    assert "kernel-notes" in suggest_known.__code__.co_consts.__repr__()


def test_trace_text_cites_resolvable_sections() -> None:
    # paolo_refactor's trace explains its NULL page with a section reference
    from kvmsim import matrix
    from kvmsim.report.diff import event_text
    from kvmsim.runner import Simulation

    sc = matrix.load_library_scenario(matrix.find_entry("gen-readonly-memslot").path)
    rep = Simulation(sc, arch="x86_ept", strategy="paolo_refactor", trace=True).run()
    text = "\n".join(event_text(e) for e in rep.events)
    assert "kernel-notes §J.6a" in text
    assert unresolved(text, anchors()) == []
