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
