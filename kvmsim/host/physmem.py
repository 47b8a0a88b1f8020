"""Physical frames and their ``struct page`` state.

Models ``mm/page_alloc.c`` and the page refcount/flag helpers of
``include/linux/mm.h`` and ``page-flags.h`` (v4.16) for the frames the
simulation uses.  There is no object per page: refcounts, flags, host
references and owners live in compact arrays indexed by pfn
(:mod:`kvmsim.host.pfnarray`, a few bytes per frame), compound orders and
the sparse "others" counts in dicts keyed by pfn; a page that was never
allocated reads as refcount 0, no flags.

Reference accounting for checkers: besides the real refcount, the model
records how many references the host itself holds on each page
(:attr:`PhysMem.host_refs`: the allocation, page cache and mapping
references).  Everything else (gup on behalf of KVM, ``kvm_get_pfn``) goes
through :meth:`PhysMem.get_page` / :meth:`PhysMem.put_page`, and the running
difference per page is kept in ``_others`` so :meth:`PhysMem.others_refs` is
cheap.
"""

from __future__ import annotations

from attrs import frozen

from kvmsim.host.constants import (
    PG_ANON,
    PG_DIRTY,
    PG_HEAD,
    PG_HUGE,
    PG_HWPOISON,
    PG_REFERENCED,
    PG_RESERVED,
    PG_THP,
)
from kvmsim.host.pfnarray import PfnArray, PfnOwner

__all__ = ["Anomaly", "PhysMem"]


@frozen
class Anomaly:
    """Something a checker should look at.

    :param kind: ``refcount_underflow`` (a put below zero, or a page freed
        while its owner still uses it) or ``get_page_zero`` (a get on a page
        whose count was 0, which the kernel without DEBUG_VM lets through).
    :param pfn: the page concerned.
    :param detail: one line in kernel terms.
    """

    kind: str
    pfn: int
    detail: str


class PhysMem:
    """Host RAM and MMIO frames.

    :param page_shift: host PAGE_SHIFT (12 on x86, 16 on ppc64 with 64K pages).
    :param ram_pages: number of RAM frames; pfns ``0 .. ram_pages - 1`` have a
        struct page (``pfn_valid``).
    :param kernel_pages: the first frames, the kernel image: PG_reserved and
        owned by the kernel; the zero page is one of them (kernel-notes §L.1).
    """

    __slots__ = (
        "_fl",
        "_mmio_next",
        "_next",
        "_orders",
        "_others",
        "_ranges",
        "_rc",
        "_words",
        "anomalies",
        "contents",
        "flags",
        "freed",
        "host_refs",
        "huge_zero_pfn",
        "kernel_pages",
        "mmio_ranges",
        "order",
        "owner",
        "page_shift",
        "page_size",
        "poisoned",
        "ram_pages",
        "refcount",
        "zero_pfn",
    )

    def __init__(self, page_shift: int, ram_pages: int = 1 << 22, kernel_pages: int = 64) -> None:
        if kernel_pages < 2 or kernel_pages >= ram_pages:
            raise ValueError("kernel_pages must be >= 2 and below ram_pages")
        self.page_shift = page_shift
        self.page_size = 1 << page_shift
        self.ram_pages = ram_pages
        self.kernel_pages = kernel_pages
        # empty_zero_page sits in the kernel's .bss, near the end of the image.
        self.zero_pfn = kernel_pages - 1
        self.refcount = PfnArray("i", ram_pages)
        """page_count per page: on the head for compound pages, per page otherwise."""
        self.flags = PfnArray("I", ram_pages)
        """PG_* flags; page-level flags of a compound page sit on the head."""
        self.order: dict[int, int] = {}
        """compound order of every compound head."""
        self.owner = PfnOwner(ram_pages)
        """who allocated the page (head or single page)."""
        self.host_refs = PfnArray("i", ram_pages)
        """references the host model itself holds, per refcounted page."""
        # The hot reference and flag paths index the arrays directly (the
        # array object never changes, it only grows); a frame beyond the
        # grown part, or above RAM, goes through PfnArray.
        self._rc = self.refcount.a
        self._fl = self.flags.a
        self._others: dict[int, int] = {}
        self.anomalies: list[Anomaly] = []
        self.freed: set[int] = set()
        """heads of freed allocations (the allocator never reuses frames)."""
        self._orders: list[int] = []  # compound orders in use, ascending
        self._ranges: list[tuple[int, int, str]] = []  # non-compound allocations: base, n, owner
        self.mmio_ranges: list[tuple[int, int, str]] = []
        self.huge_zero_pfn: int | None = None
        self.contents: dict[int, int] = {}
        self._words: dict[int, set[int]] = {}  # pfn -> offsets it holds in contents
        """what has been stored, by physical byte address (pfn << page_shift |
        offset): one value per address, as written with its width; a frame
        never written reads 0 (the allocator hands out zeroed frames here,
        and never reuses one)."""
        self.poisoned: set[int] = set()
        """every pfn ``SetPageHWPoison`` was called on (the flag is never cleared)."""
        self.refcount.fill(0, kernel_pages, 1)
        self.host_refs.fill(0, kernel_pages, 1)
        self.flags.fill(0, kernel_pages, PG_RESERVED)
        self.owner.fill(0, kernel_pages, "kernel")
        self._next = kernel_pages
        self._mmio_next = ram_pages

    # ------------------------------------------------------------------ allocation

    def alloc_pages(
        self, order: int, *, owner: str, compound: bool = True, kind: str = "anon"
    ) -> int:
        """``alloc_pages(gfp, order)`` (``__GFP_COMP`` when ``compound``).

        Returns the head pfn with refcount 1, held by ``owner`` (a host
        reference).  ``kind``: ``anon`` (PageAnon), ``file`` (page cache),
        ``hugetlb`` (PageHuge), ``thp`` (PageTransHuge, anonymous),
        ``shmem_thp`` (PageTransHuge in the shmem page cache: not PageAnon,
        ``shmem_alloc_hugepage``), ``driver`` or ``kernel``.
        A non-compound higher-order allocation leaves its tail pages at
        refcount 0, as the kernel does.
        """
        n = 1 << order
        base = (self._next + n - 1) & ~(n - 1)
        if base + n > self.ram_pages:
            raise MemoryError("out of simulated RAM")
        self._next = base + n
        self.refcount[base] = 1
        self.host_refs[base] = 1
        self.owner[base] = owner
        fl = PG_ANON if kind == "anon" else 0
        if order and compound:
            self.order[base] = order
            if order not in self._orders:
                self._orders.append(order)
                self._orders.sort()
            fl |= PG_HEAD
            if kind == "hugetlb":
                fl |= PG_HUGE
            elif kind == "thp":
                fl |= PG_THP | PG_ANON
            elif kind == "shmem_thp":
                fl |= PG_THP
        elif order:
            self._ranges.append((base, n, owner))
        self.flags[base] = fl
        return base

    def alloc_unrefcounted(self, npages: int, owner: str = "driver") -> int:
        """A driver's non-compound higher-order allocation.

        ``alloc_pages(GFP_KERNEL, order)`` without ``__GFP_COMP``: the first
        page has refcount 1 (the driver's), every other page is a valid
        struct page with refcount 0 (section D, CVE-2021-22543).
        """
        order = max(0, (npages - 1).bit_length())
        return self.alloc_pages(order, owner=owner, compound=False, kind="driver")

    def alloc_mmio(self, npages: int, owner: str = "mmio") -> int:
        """Frames above RAM for a device: no struct page, ``pfn_valid`` false."""
        base = self._mmio_next
        self._mmio_next += npages
        self.mmio_ranges.append((base, npages, owner))
        return base

    def huge_zero_page(self, order: int) -> int:
        """``get_huge_zero_page``: allocated on first use, an ordinary compound
        page (not reserved, kernel-notes §L.1) whose allocation reference the host keeps."""
        if self.huge_zero_pfn is None:
            self.huge_zero_pfn = self.alloc_pages(
                order, owner="huge_zero_page", compound=True, kind="thp"
            )
            self.flags[self.huge_zero_pfn] &= ~PG_ANON
        return self.huge_zero_pfn

    # ------------------------------------------------------------------ contents

    def read_word(self, pfn: int, offset: int) -> int:
        """What a load at byte *offset* of frame *pfn* returns (0 if never stored)."""
        return self.contents.get((pfn << self.page_shift) | offset, 0)

    def write_word(self, pfn: int, offset: int, value: int, width: int = 8) -> None:
        """A store of *value* (cut to *width* bytes) at byte *offset* of *pfn*.
        A zero is not kept (a word never stored reads 0): a frame only ever
        written with zeros costs nothing, as on the demand-paging path."""
        value &= (1 << (8 * width)) - 1
        addr = (pfn << self.page_shift) | offset
        if value:
            self.contents[addr] = value
            words = self._words.get(pfn)
            if words is None:
                self._words[pfn] = {offset}
            else:
                words.add(offset)
        elif addr in self.contents:
            del self.contents[addr]
            self._words[pfn].discard(offset)

    def page_contents(self, pfn: int) -> dict[int, int]:
        """Frame *pfn*'s stored words, by offset (what swap-out writes to
        the swap slot; the frame keeps them, as a freed frame does, for
        whoever still maps it)."""
        base = pfn << self.page_shift
        return {off: self.contents[base | off] for off in sorted(self._words.get(pfn, ()))}

    def put_contents(self, pfn: int, words: dict[int, int]) -> None:
        """Fill frame *pfn* with *words* (swap-in reading the slot back)."""
        for off, v in words.items():
            self.write_word(pfn, off, v)

    def copy_contents(self, src: int, dst: int, npages: int = 1) -> None:
        """``copy_user_highpage`` / ``copy_highpage`` over *npages* frames: the
        new frames read what the old ones held (COW break, migration)."""
        for i in range(npages):
            for off, v in self.page_contents(src + i).items():
                self.write_word(dst + i, off, v)

    def _free(self, head: int, why: str) -> None:
        """``__free_pages``: the page goes back to the allocator (never reused)."""
        if self._owned(head):
            self.anomalies.append(
                Anomaly("refcount_underflow", head, f"page freed while owned ({why})")
            )
        # PG_hwpoison and the compound layout survive freeing (the frames are
        # never handed out again), so stale users still resolve heads.
        self.flags[head] = self.flags.get(head, 0) & (PG_HWPOISON | PG_HEAD | PG_HUGE | PG_THP)
        self.freed.add(head)

    def _owned(self, pfn: int) -> bool:
        if self.host_refs.get(pfn, 0) > 0:
            return True
        # A tail of a driver's non-compound allocation: the driver still uses
        # it while the allocation's first page is alive.
        for base, n, _ in self._ranges:
            if base < pfn < base + n:
                return base not in self.freed
        return False

    # ------------------------------------------------------------------ lookups

    def pfn_valid(self, pfn: int) -> bool:
        """``pfn_valid``: the frame has a struct page."""
        return 0 <= pfn < self.ram_pages

    def is_zero_pfn(self, pfn: int) -> bool:
        """``is_zero_pfn``."""
        return pfn == self.zero_pfn

    def compound_head(self, pfn: int) -> int:
        """``compound_head``: the head of the compound page holding ``pfn``,
        or ``pfn`` itself.  Checks the aligned base for each order in use."""
        if not self._orders or pfn in self.order:
            return pfn
        order = self.order
        for o in self._orders:
            base = pfn & ~((1 << o) - 1)
            if order.get(base) == o:
                return base
        return pfn

    def compound_order(self, pfn: int) -> int:
        """``compound_order(page)``: 0 unless ``pfn`` is a compound head."""
        return self.order.get(pfn, 0)

    def page_count(self, pfn: int) -> int:
        """``page_count``: the head's refcount."""
        return self.refcount.get(self.compound_head(pfn), 0)

    def page_ref_count(self, pfn: int) -> int:
        """``page_ref_count``: the page's own counter (0 for tails)."""
        return self.refcount.get(pfn, 0)

    def owner_of(self, pfn: int) -> str | None:
        """Who allocated the frame (RAM or MMIO), or None if nobody."""
        head = self.compound_head(pfn)
        o = self.owner.get(head)
        if o is not None:
            return o
        for base, n, owner in self._ranges:
            if base <= pfn < base + n:
                return owner
        for base, n, owner in self.mmio_ranges:
            if base <= pfn < base + n:
                return owner
        return None

    def _flag(self, pfn: int, bit: int) -> bool:
        return bool(self.flags.get(self.compound_head(pfn), 0) & bit)

    def PageHuge(self, pfn: int) -> bool:
        """``PageHuge``: part of a hugetlbfs page."""
        return self._flag(pfn, PG_HUGE)

    def PageCompound(self, pfn: int) -> bool:
        """``PageCompound``: head or tail of a compound page."""
        return bool(self._orders) and self.compound_head(pfn) in self.order

    def PageTransCompound(self, pfn: int) -> bool:
        """``PageTransCompound``: part of a transparent huge page."""
        return self._flag(pfn, PG_THP)

    def PageTransHuge(self, pfn: int) -> bool:
        """``PageTransHuge``: the head of a THP."""
        return bool(self.flags.get(pfn, 0) & PG_THP) and pfn in self.order

    def PageAnon(self, pfn: int) -> bool:
        """``PageAnon``."""
        return self._flag(pfn, PG_ANON)

    def PageReserved(self, pfn: int) -> bool:
        """``PageReserved`` (per page, as the flag is PF_NO_COMPOUND)."""
        fl = self._fl
        return bool((fl[pfn] if 0 <= pfn < len(fl) else self.flags[pfn]) & PG_RESERVED)

    def SetPageReserved(self, pfn: int) -> None:
        """``SetPageReserved``."""
        self.flags[pfn] = self.flags.get(pfn, 0) | PG_RESERVED

    def PageHWPoison(self, pfn: int) -> bool:
        """``PageHWPoison`` on the page itself; a hugetlb page is poisoned on its head."""
        return bool(self.flags.get(pfn, 0) & PG_HWPOISON) or (
            self._flag(pfn, PG_HWPOISON) and self._flag(pfn, PG_HUGE)
        )

    def SetPageHWPoison(self, pfn: int) -> None:
        """``SetPageHWPoison``."""
        self.flags[pfn] = self.flags.get(pfn, 0) | PG_HWPOISON
        self.poisoned.add(pfn)

    def PageDirty(self, pfn: int) -> bool:
        """``PageDirty`` (on the head)."""
        return self._flag(pfn, PG_DIRTY)

    def _set_head_flag(self, pfn: int, bit: int) -> None:
        head = self.compound_head(pfn) if self._orders else pfn
        fl = self._fl
        if 0 <= head < len(fl):
            fl[head] |= bit
        else:
            self.flags[head] = self.flags[head] | bit

    def SetPageDirty(self, pfn: int) -> None:
        """``SetPageDirty`` (on the head)."""
        self._set_head_flag(pfn, PG_DIRTY)

    def set_page_dirty_lock(self, pfn: int) -> None:
        """``set_page_dirty_lock``: the model has no page lock to take."""
        self._set_head_flag(pfn, PG_DIRTY)

    def ClearPageDirty(self, pfn: int) -> None:
        head = self.compound_head(pfn)
        self.flags[head] = self.flags.get(head, 0) & ~PG_DIRTY

    def PageReferenced(self, pfn: int) -> bool:
        return self._flag(pfn, PG_REFERENCED)

    def SetPageReferenced(self, pfn: int) -> None:
        """``SetPageReferenced`` (on the head)."""
        self._set_head_flag(pfn, PG_REFERENCED)

    def mark_page_accessed(self, pfn: int) -> None:
        """``mark_page_accessed``: the model only keeps PG_referenced."""
        self._set_head_flag(pfn, PG_REFERENCED)

    # ------------------------------------------------------------------ references

    def get_page(self, pfn: int) -> None:
        """``get_page``: one reference on the compound head.

        Without CONFIG_DEBUG_VM a get on a page whose count is 0 still
        increments; the model records it as an anomaly ``get_page_zero``.
        """
        head = self.compound_head(pfn) if self._orders else pfn
        rc = self._rc
        fast = 0 <= head < len(rc)
        c = rc[head] if fast else self.refcount[head]
        if c <= 0:
            self.anomalies.append(Anomaly("get_page_zero", head, f"get_page on count {c}"))
        if fast:
            rc[head] = c + 1
        else:
            self.refcount[head] = c + 1
        d = self._others.get(head, 0) + 1
        if d:
            self._others[head] = d
        else:
            del self._others[head]

    def get_page_unless_zero(self, pfn: int) -> bool:
        """``get_page_unless_zero``: acts on the page itself, not the head
        (section D); fails on a count of 0."""
        c = self.refcount.get(pfn, 0)
        if c <= 0:
            return False
        self.refcount[pfn] = c + 1
        d = self._others.get(pfn, 0) + 1
        if d:
            self._others[pfn] = d
        else:
            del self._others[pfn]
        return True

    def page_cache_get_speculative(self, pfn: int) -> bool:
        """``page_cache_get_speculative`` on a head: fails on a count of 0."""
        return self.get_page_unless_zero(pfn)

    def page_cache_add_speculative(self, pfn: int, n: int) -> bool:
        """``page_cache_add_speculative(head, n)``: ``n`` references unless the
        count is 0."""
        c = self.refcount.get(pfn, 0)
        if c <= 0:
            return False
        self.refcount[pfn] = c + n
        d = self._others.get(pfn, 0) + n
        if d:
            self._others[pfn] = d
        else:
            del self._others[pfn]
        return True

    def put_page(self, pfn: int) -> None:
        """``put_page``: drop a reference on the compound head; free the page at 0.

        A put below zero is recorded as ``refcount_underflow``, and so is the
        freeing of a page its owner still uses ("freed while owned").
        """
        head = self.compound_head(pfn) if self._orders else pfn
        rc = self._rc
        fast = 0 <= head < len(rc)
        c = (rc[head] if fast else self.refcount[head]) - 1
        d = self._others.get(head, 0) - 1
        if d:
            self._others[head] = d
        else:
            del self._others[head]
        if fast:
            rc[head] = c
        else:
            self.refcount[head] = c
        if c == 0:
            self._free(head, "put_page")
        elif c < 0:
            self.anomalies.append(Anomaly("refcount_underflow", head, f"put_page to {c}"))

    def host_get(self, pfn: int, n: int = 1) -> None:
        """A reference the host model takes for itself (page cache, mapping)."""
        head = self.compound_head(pfn)
        self.refcount[head] = self.refcount.get(head, 0) + n
        self.host_refs[head] = self.host_refs.get(head, 0) + n

    def host_put(self, pfn: int, n: int = 1) -> None:
        """Drop references the host model holds; free the page at 0."""
        head = self.compound_head(pfn)
        h = self.host_refs.get(head, 0) - n
        if h:
            self.host_refs[head] = h
        else:
            del self.host_refs[head]
        c = self.refcount.get(head, 0) - n
        self.refcount[head] = c
        if c == 0:
            self._free(head, "host unmap")
        elif c < 0:
            self.anomalies.append(Anomaly("refcount_underflow", head, f"host put to {c}"))

    def others_refs(self) -> dict[int, int]:
        """For every page whose refcount differs from the host's own
        references: refcount minus host references (positive: someone else,
        i.e. KVM, holds references; negative: someone dropped references they
        did not own)."""
        return dict(self._others)

    def clear_anomalies(self) -> list[Anomaly]:
        """Return the recorded anomalies and forget them."""
        out = self.anomalies
        self.anomalies = []
        return out
