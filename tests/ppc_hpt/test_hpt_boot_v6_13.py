"""The guest's boot-time bolting of its linear mapping, and the v6.13 HPT
handler (follow_pfn_2024's selection on ppc_hpt)."""

from __future__ import annotations

from kvmsim_plugins.ppc_hpt.hpt import HptState
from kvmsim_plugins.ppc_hpt.hpte import HPTE_V_VALID

from kvmsim.scenario import builtin_scenarios
from kvmsim.testing import build_sim

LIB = {p.stem: p for p in builtin_scenarios()}

POPULATED = """
name = "hpt-test-bolt"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
populate = true
[[memslot]]
gpa = 0x0
vma = "ram"
[[step]]
do = "access"
gpa = 0x20000
op = "read"
"""


def test_race_point_reached_after_host_write() -> None:
    # QEMU touches the page after the guest bolted its linear mapping at boot
    # (absent then: no host PTE, kvmppc_do_h_enter, B.5), so the first guest
    # access still faults into kvmppc_book3s_hv_page_fault and the munmap
    # fires at after_hva_to_pfn; mmu_notifier_retry / the vanished host PTE
    # keep the stale page out (A.10, C.2) and the retry finds no vma: -EFAULT.
    sim = build_sim(
        LIB["gen-race-munmap-after-hva-to-pfn"],
        strategy="generic_v4_16",
        arch="ppc_hpt",
        trace=True,
    )
    report = sim.run()
    names = [e.get("event") for e in report.events]
    assert "race_point_not_reached" not in names
    assert "kvm_page_fault_enter" in names
    assert report.steps[2].outcome == "efault"
    assert report.passed


def test_populated_ram_is_bolted_valid_at_boot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # htab_bolt_mapping over pages the host already maps: H_ENTER makes the
    # entries valid at once (B.5, H_ENTER with a present host PTE)
    path = tmp_path / "bolt.toml"
    path.write_text(POPULATED)
    sim = build_sim(path, strategy="generic_v4_16", arch="ppc_hpt", trace=True)
    st: HptState = sim.kvm.arch
    assert 0x20000 in st.bolted
    index = st.entered[0x20000]
    assert st.v[index] & HPTE_V_VALID
    report = sim.run()
    # the access hits the bolted entry: no fault at all
    assert not [e for e in report.events if e.get("event") == "kvm_page_fault"]
    assert report.steps[0].outcome == "mapped"


def test_v6_13_handler_releases_only_the_refcounted_page() -> None:
    # E.9: the handler drops exactly *refcounted_page; the zero page gup
    # referenced on a read of untouched anon memory is put (no L.1 leak)
    sim = build_sim(
        LIB["gen-anon-read-first-touch"], strategy="follow_pfn_2024", arch="ppc_hpt", trace=True
    )
    assert sim.kvm.handler == "v6.13"
    report = sim.run()
    assert "__kvm_faultin_pfn" in [e.get("event") for e in report.events]
    assert not report.verdicts
    assert report.passed


def test_v6_13_handler_takes_no_reference_on_pfnmap_ram() -> None:
    # E.7: a remapped pfn comes back with refcounted_page = NULL; the handler
    # must not put the count-0 driver page (no refcount_underflow, unlike v5.7)
    sim = build_sim(LIB["strat-pfnmap-unrefcounted"], strategy="follow_pfn_2024", arch="ppc_hpt")
    report = sim.run()
    assert not report.verdicts
    assert report.passed
