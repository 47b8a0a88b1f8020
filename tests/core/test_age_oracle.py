"""The ``age`` step's answers against a brute-force oracle, on every builtin
arch: with the current kernels' ageing (kernel-notes §L.8), a page is young
exactly when the guest used it since the last ``clear_young`` that covered
it.  The radix and arm handlers fault R/AF back in, the HPT and EPT
hardware sets R/A on access, and neither a prefetched SPTE (x86) nor an
HPTE entered for another page is young.  ``clear_young`` answers whether
any page of its range was young and makes them all old; ``test_young``
answers the same and changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario

PAGES = 16
#: arch → host page size
ARCHES = {"x86_ept": 0x1000, "ppc_radix_4k": 0x1000, "ppc_radix": 0x10000, "ppc_hpt": 0x10000}
STRATEGIES = ("generic_v4_16", "follow_pfn_2024")

Op = tuple[str, int, int]  # ("read" | "write", page, 0) or ("clear" | "test", first, npages)

ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(("read", "write")), st.integers(0, PAGES - 1), st.just(0)),
        st.integers(0, PAGES - 1).flatmap(
            lambda first: st.tuples(
                st.sampled_from(("clear", "test")), st.just(first), st.integers(1, PAGES - first)
            )
        ),
    ),
    min_size=1,
    max_size=12,
)


def scenario(arch: str, ps: int, steps: list[Op]) -> str:
    text = (
        f'name = "oracle"\narch = "{arch}"\n'
        f'[[vma]]\nname = "ram"\nsize = {PAGES * ps}\nbacking = "anon"\npopulate = true\n'
        '[[memslot]]\ngpa = 0\nvma = "ram"\n'
    )
    for kind, a, b in steps:
        if kind in ("read", "write"):
            text += f'[[step]]\ndo = "access"\ngpa = {a * ps:#x}\nop = "{kind}"\n'
        else:
            text += (
                f'[[step]]\ndo = "age"\nvma = "ram"\noffset = {a * ps:#x}\n'
                f'size = {b * ps}\nyoung = "{kind}"\n'
            )
    return text


def oracle(steps: list[Op]) -> list[bool | None]:
    young = [False] * PAGES
    out: list[bool | None] = []
    for kind, a, b in steps:
        if kind in ("read", "write"):
            young[a] = True
            out.append(None)
            continue
        out.append(any(young[a : a + b]))
        if kind == "clear":
            young[a : a + b] = [False] * b
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("arch", sorted(ARCHES))
@settings(max_examples=25, deadline=None)
@given(steps=ops)
@example(
    steps=[("write", 3, 0), ("test", 0, 16), ("test", 3, 1), ("clear", 0, 16), ("clear", 2, 4)]
)
@example(steps=[("read", 5, 0), ("clear", 5, 1), ("read", 5, 0), ("test", 4, 3), ("clear", 0, 5)])
@example(steps=[("write", 7, 0), ("write", 8, 0), ("clear", 7, 1), ("test", 8, 1), ("test", 6, 1)])
def test_young_answers_match_the_oracle(arch: str, strategy: str, steps: list[Op]) -> None:
    sc = parse_scenario(scenario(arch, ARCHES[arch], steps), "<oracle>")
    report = Simulation(sc, strategy=strategy).run()
    assert [s.outcome for s in report.steps if s.do == "access"] == ["mapped"] * sum(
        1 for k, _, _ in steps if k in ("read", "write")
    )
    assert not report.verdicts
    assert [s.young for s in report.steps] == oracle(steps)
