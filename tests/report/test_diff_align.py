"""kvmsim diff aligns traces by what they did (issue 22, item 11)."""

from __future__ import annotations

from typing import Any

from kvmsim.report.diff import align


def _ev(step: int, name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, "step": step, "seq": 0, **fields}


def _trace(extra: bool) -> list[dict[str, Any]]:
    events = [
        _ev(0, "kvm_page_fault", gpa=0x1000),
        _ev(0, "__get_user_pages_fast", ret=0),
        _ev(0, "get_user_pages_unlocked", ret=1),
        _ev(0, "kvmppc_create_pte", pfn=0x40),
        _ev(1, "kvm_page_fault", gpa=0x2000),
        _ev(1, "kvmppc_create_pte", pfn=0x41),
    ]
    if extra:  # one event inserted in the middle of step 0
        events.insert(2, _ev(0, "check_vma_flags", ret=-14))
    return events


def test_an_inserted_event_gets_its_own_row_and_shifts_nothing() -> None:
    d = align(_trace(False), _trace(True))
    assert len(d.rows) == 7
    assert d.first == 2
    # the inserted event has no partner on the left
    left, right = d.rows[2]
    assert left is None and right is not None and "check_vma_flags" in right
    # every other row pairs the same event on both sides, identically
    for i, (a, b) in enumerate(d.rows):
        if i != 2:
            assert a == b, (i, a, b)


def test_events_with_different_names_are_never_paired() -> None:
    left = [_ev(0, "a"), _ev(0, "b"), _ev(0, "c"), _ev(0, "z")]
    right = [_ev(0, "a"), _ev(0, "x"), _ev(0, "y"), _ev(0, "z")]
    d = align(left, right)
    for a, b in d.rows:
        if a is not None and b is not None:
            assert a.split()[1] == b.split()[1]
    assert [r for r in d.rows if None in r] and d.first == 1


def test_same_event_with_other_values_shares_a_row_and_is_a_divergence() -> None:
    d = align([_ev(0, "hva_to_pfn", pfn=0x6)], [_ev(0, "hva_to_pfn", pfn=0x400003)])
    assert d.rows == [("[0] hva_to_pfn pfn=0x6", "[0] hva_to_pfn pfn=0x400003")]
    assert d.first == 0


def test_identical_traces() -> None:
    d = align(_trace(True), _trace(True))
    assert d.identical and all(a == b for a, b in d.rows)


def _what(row: str) -> list[str]:
    # "[step] name k=v ..." or "name k=v ...": the step and the name
    words = row.split()
    return words[:2] if words[0].startswith("[") else words[:1]


def test_real_diff_pairs_only_like_events_and_shows_no_decimal_address(
    capsys: Any,
) -> None:
    import re

    from kvmsim.cli import main

    rc = main(
        [
            "diff",
            "xive-esb-eoi",
            "--strategy",
            "ppc_original",
            "--strategy",
            "generic_v4_16",
            "--arch",
            "ppc_radix",
            "--width",
            "400",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if " ≠ " in line]
    assert rows
    for line in rows:
        left, right = line[3:].split(" ≠ ", 1)
        assert _what(left) == _what(right), line
    # ppc_original's vm_pgoff guess and the generic remapped path both
    # appear, each on its own side
    assert re.search(r"ppc_pfnmap_branch .* <", out)
    assert re.search(r"> \[0\] fixup_user_fault", out)
    assert not re.search(r"\b(start|end|address|addr|hva|pfn)=\d{3,}", out)
    assert "vm_flags=VM_READ|" in out
