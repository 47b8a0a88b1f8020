"""The comparison rules and the observables' helpers (no /dev/kvm needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmsim.realkvm.compare import compare_step, load_known
from kvmsim.realkvm.obs import FrameLabeller, Obs, bitmap_gpas

KW = {"scenario": "s", "module": "kvm_pvm", "kernel": "6.18.44"}


def test_equal_shared_observables_agree_and_one_sided_ones_are_ignored() -> None:
    r = compare_step(0, "access", Obs("mapped", value=0, leaf=4096), Obs("mapped", value=0), **KW)
    assert r.status == "agree"


@pytest.mark.parametrize(
    ("real", "model", "says"),
    [
        (Obs("efault"), Obs("mapped"), "outcome"),
        (Obs("mapped", value=1), Obs("mapped", value=2), "value"),
        (Obs("mapped", frame="zero"), Obs("mapped", frame="4k new"), "frame"),
        (Obs("mapped", leaf=4096), Obs("mapped", leaf=2 << 20), "leaf"),
        (Obs("done", dirty=(0x1000,)), Obs("done", dirty=()), "dirty"),
    ],
)
def test_a_differing_observable_disagrees_and_is_named(real: Obs, model: Obs, says: str) -> None:
    r = compare_step(3, "access", real, model, **KW)
    assert r.status == "disagree" and r.reason == f"differs in {says}"


def test_a_recorded_difference_is_known_only_where_it_applies() -> None:
    known = load_known(
        '[[known]]\nscenario = "s"\nstep = 3\nobservable = "leaf"\nmodule = "kvm_pvm"\n'
        'kernel = "6\\\\.18\\\\."\nreason = "why"\n'
    )
    real, model = Obs("mapped", leaf=4096), Obs("mapped", leaf=2 << 20)
    assert compare_step(3, "access", real, model, known=known, **KW).status == "known"
    other = {**KW, "module": "kvm_intel"}
    assert compare_step(3, "access", real, model, known=known, **other).status == "disagree"
    # a second differing observable the record does not cover still disagrees
    real2 = Obs("mapped", value=1, leaf=4096)
    model2 = Obs("mapped", value=2, leaf=2 << 20)
    assert compare_step(3, "access", real2, model2, known=known, **KW).status == "disagree"


def test_the_shipped_known_file_parses() -> None:
    assert isinstance(load_known(), tuple)


def test_a_fault_that_never_reached_kvm_is_not_comparable() -> None:
    real = Obs("mapped", frame="4k same@0", faulted=False)
    model = Obs("mapped", frame="4k same@0", leaf=4096, faulted=True)
    r = compare_step(1, "access", real, model, **KW)
    assert r.status == "not_comparable" and "pf_taken" in r.reason


def test_nothing_shared_is_not_comparable_and_unrun_is_unsupported() -> None:
    assert compare_step(0, "mprotect", Obs(None), Obs(None), **KW).status == "not_comparable"
    assert compare_step(0, "host_write", None, Obs("done"), **KW).status == "unsupported"


def test_frame_labels() -> None:
    lab = FrameLabeller()
    assert lab.label(0, 7, zero=True, thp=False) == "zero"
    assert lab.label(1, 9, zero=False, thp=True) == "thp new"
    assert lab.label(2, 9, zero=False, thp=True) == "thp same@1"
    assert lab.label(3, 10, zero=False, thp=False) == "4k new"
    assert lab.label(4, None, zero=False, thp=False) is None


@given(st.sets(st.integers(0, 1023)))
def test_bitmap_gpas_matches_a_bit_by_bit_oracle(bits: set[int]) -> None:
    nbytes = 128
    value = sum(1 << b for b in bits)
    raw = value.to_bytes(nbytes, "little")  # KVM's bitmap: little-endian longs
    assert bitmap_gpas(raw, 0x100000) == tuple(0x100000 + b * 4096 for b in sorted(bits))
