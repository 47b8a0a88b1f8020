"""The per-vcpu cache of emulated-MMIO HPTEs (``vcpu->arch.mmio_cache``,
``struct mmio_hpte_cache``; added in v4.10 by "KVM: PPC: Book3S HV: Add a
per vcpu cache for recent MMIO emulation", still there in v6.13 for
non-nested guests).

Real mode (``kvmppc_hpte_hv_fault``) looks a no-HPTE fault up here before
searching the HPT (``mmio_cache_search``); an entry counts only while the
VM's ``mmio_update`` counter still has the value it had when the entry was
filled.  When the HPTE real mode used is an emulated-MMIO one (absent,
storage key 31) and it did not come from the cache, it is saved in the next
of four slots, round robin (``next_mmio_cache_entry``).  The virtual-mode
handler, given a cache entry that is still current, goes straight to MMIO
emulation with the guest address from the cached guest HPTE, without
locking or re-reading the HPTE.  ``mmio_update`` rises when an MMIO HPTE is
removed (H_REMOVE, H_BULK_REMOVE, H_PROTECT) and when a memslot is created;
scenarios do not create memslots while they run.

Read from: Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
arch/powerpc/kvm/book3s_hv_rm_mmu.c (``mmio_cache_search``,
``next_mmio_cache_entry``, ``kvmppc_hpte_hv_fault``) and
book3s_64_mmu_hv.c (``kvmppc_book3s_hv_page_fault``'s first test);
torvalds/linux book3s_hv_rm_mmu.c of v4.20+ for the ``!nested`` guard,
which leaves the non-nested path unchanged.
"""

from __future__ import annotations

from typing import Final

from kvmsim_plugins.ppc_hpt.hpte import SLB_BASE_PAGE_SHIFT, SLB_VSID_L, SLB_VSID_LP

MMIO_HPTE_CACHE_SIZE: Final = 4


class MmioCacheEntry:
    """``struct mmio_hpte_cache_entry``."""

    __slots__ = (
        "eaddr",
        "hpte_r",
        "hpte_v",
        "mmio_update",
        "pte_index",
        "rpte",
        "slb_base_pshift",
        "slb_v",
    )

    def __init__(
        self, eaddr: int, slb_v: int, index: int, v: int, r: int, rpte: int, mmio_update: int
    ) -> None:
        pshift = 12
        if slb_v & SLB_VSID_L:
            pshift = SLB_BASE_PAGE_SHIFT[(slb_v & SLB_VSID_LP) >> 4]
        self.eaddr = eaddr
        self.slb_base_pshift = pshift
        self.pte_index = index
        self.hpte_v = v
        self.hpte_r = r
        self.rpte = rpte
        self.slb_v = slb_v
        self.mmio_update = mmio_update


class MmioCache:
    """One vcpu's four entries and the round-robin index."""

    __slots__ = ("entries", "index")

    def __init__(self) -> None:
        self.entries: list[MmioCacheEntry | None] = [None] * MMIO_HPTE_CACHE_SIZE
        self.index = 0

    def search(self, eaddr: int, slb_v: int, mmio_update: int) -> MmioCacheEntry | None:
        """``mmio_cache_search``: a current entry for the same base page of
        the same segment, else None."""
        for e in self.entries:
            if e is not None and e.mmio_update == mmio_update:
                s = e.slb_base_pshift
                if e.eaddr >> s == eaddr >> s and e.slb_v == slb_v:
                    return e
        return None

    def fill(self, entry: MmioCacheEntry) -> None:
        """``next_mmio_cache_entry`` plus the caller's stores into it."""
        self.entries[self.index] = entry
        self.index = (self.index + 1) % MMIO_HPTE_CACHE_SIZE


__all__ = ["MMIO_HPTE_CACHE_SIZE", "MmioCache", "MmioCacheEntry"]
