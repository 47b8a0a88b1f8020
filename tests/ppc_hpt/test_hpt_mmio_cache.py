"""The per-vcpu emulated-MMIO HPTE cache (plugins/ppc_hpt/mmio_cache.py):
a second no-HPTE fault on an emulated-MMIO page is answered from the cache,
and removing the MMIO HPTE (mmio_update rises) makes every entry stale."""

from __future__ import annotations

from kvmsim_plugins.ppc_hpt.mmio_cache import MMIO_HPTE_CACHE_SIZE, MmioCache, MmioCacheEntry

from kvmsim.testing import build_sim

# gpa 0x1000000 is in no memslot: H_ENTER makes an emulated-MMIO HPTE
# (absent, storage key 31), and every access to it exits to QEMU.
BASE = """
name = "t"
description = "t"
arch = "ppc_hpt"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "hcall"
call = "H_ENTER"
ea = 0x12340000
gpa = 0x1000000
wimg = "IG"
expect_ret = "H_SUCCESS"
"""

LOAD = """
[[step]]
do = "access"
ea = 0x12340000
gpa = 0x1000000
op = "read"
expect = {{ outcome = "{outcome}", verdicts = [] }}
"""

REMOVE = """
[[step]]
do = "hcall"
call = "H_REMOVE"
ea = 0x12340000
expect_ret = "H_SUCCESS"
"""


def _events(report: object, name: str) -> list[dict[str, object]]:
    return [e for e in report.events if e["event"] == name]  # type: ignore[attr-defined]


def test_second_mmio_fault_is_answered_from_the_cache() -> None:
    text = BASE + LOAD.format(outcome="mmio") + LOAD.format(outcome="mmio")
    sim = build_sim(text, strategy="generic_v4_16", trace=True)
    report = sim.run()
    assert report.passed, [s.expect_failures for s in report.steps]
    hits = _events(report, "mmio_cache_hit")
    assert [h["step"] for h in hits] == [2]
    # the hit skips the virtual-mode HPTE re-read (no kvm_page_fault_enter)
    enters = _events(report, "kvm_page_fault_enter")
    assert [e["step"] for e in enters] == [1]


def test_h_remove_of_the_mmio_hpte_makes_the_cache_stale() -> None:
    # after H_REMOVE there is no HPTE: a stale cache hit would still exit to
    # QEMU; the kernel gives the guest its DSI
    text = BASE + LOAD.format(outcome="mmio") + REMOVE + LOAD.format(outcome="guest_fault")
    report = build_sim(text, strategy="generic_v4_16", trace=True).run()
    assert report.passed, [s.expect_failures for s in report.steps]
    assert not _events(report, "mmio_cache_hit")


def _oracle(fills: list[tuple[int, int]], eaddr: int, update: int) -> int | None:
    """The last MMIO_HPTE_CACHE_SIZE fills, searched in slot order."""
    slots: list[tuple[int, int] | None] = [None] * MMIO_HPTE_CACHE_SIZE
    for i, f in enumerate(fills):
        slots[i % MMIO_HPTE_CACHE_SIZE] = f
    for s in slots:
        if s is not None and s[1] == update and s[0] >> 16 == eaddr >> 16:
            return s[0]
    return None


def test_search_matches_a_round_robin_oracle() -> None:
    import random

    rng = random.Random(7)
    slb_v = 0x110  # L with LP 01: a 64K-base segment
    for _ in range(200):
        cache = MmioCache()
        fills = []
        for _ in range(rng.randrange(0, 10)):
            ea = rng.randrange(0, 8) << 16 | rng.randrange(0, 1 << 16)
            upd = rng.randrange(0, 2)
            fills.append((ea, upd))
            cache.fill(MmioCacheEntry(ea, slb_v, 0, 0, 0, 0, upd))
        ea = rng.randrange(0, 8) << 16
        upd = rng.randrange(0, 2)
        got = cache.search(ea, slb_v, upd)
        want = _oracle(fills, ea, upd)
        assert (None if got is None else got.eaddr) == want
