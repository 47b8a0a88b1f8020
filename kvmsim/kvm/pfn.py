"""KVM's pfn values and helpers (include/linux/kvm_host.h, virt/kvm/kvm_main.c, v4.16).

Reference semantics are those of kernel-notes §A.9: a pfn without a
``struct page`` counts as "reserved", and so does a PG_reserved page such as
the zero page, which is why the v4.16 release helpers leak a zero-page
reference that gup took.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID, PAGE_OFFSET, Memslot

if TYPE_CHECKING:
    from kvmsim.host.physmem import PhysMem

KVM_PFN_ERR_MASK: Final = 0x7FF << 52
KVM_PFN_ERR_NOSLOT_MASK: Final = 0xFFF << 52
KVM_PFN_NOSLOT: Final = 1 << 63
KVM_PFN_ERR_FAULT: Final = KVM_PFN_ERR_MASK
KVM_PFN_ERR_HWPOISON: Final = KVM_PFN_ERR_MASK + 1
KVM_PFN_ERR_RO_FAULT: Final = KVM_PFN_ERR_MASK + 2

KVM_HVA_ERR_BAD: Final = PAGE_OFFSET


def kvm_hva_err_ro_bad(page_shift: int) -> int:
    """``KVM_HVA_ERR_RO_BAD``: ``PAGE_OFFSET + PAGE_SIZE`` (a kernel address,
    so ``kvm_is_error_hva`` holds; its value depends on the page size)."""
    return PAGE_OFFSET + (1 << page_shift)


def is_error_pfn(pfn: int) -> bool:
    """``is_error_pfn``."""
    return bool(pfn & KVM_PFN_ERR_MASK)


def is_error_noslot_pfn(pfn: int) -> bool:
    """``is_error_noslot_pfn``: true for every error pfn and for NOSLOT."""
    return bool(pfn & KVM_PFN_ERR_NOSLOT_MASK)


def is_noslot_pfn(pfn: int) -> bool:
    """``is_noslot_pfn``."""
    return pfn == KVM_PFN_NOSLOT


def kvm_is_error_hva(addr: int) -> bool:
    """``kvm_is_error_hva``: any address at or above PAGE_OFFSET."""
    return addr >= PAGE_OFFSET


def pfn_name(pfn: int) -> str:
    """A readable name for an error pfn, else the pfn in hex."""
    return {
        KVM_PFN_ERR_FAULT: "KVM_PFN_ERR_FAULT",
        KVM_PFN_ERR_HWPOISON: "KVM_PFN_ERR_HWPOISON",
        KVM_PFN_ERR_RO_FAULT: "KVM_PFN_ERR_RO_FAULT",
        KVM_PFN_NOSLOT: "KVM_PFN_NOSLOT",
    }.get(pfn, hex(pfn))


def gfn_to_hva_many(slot: Memslot | None, gfn: int, write: bool, page_shift: int) -> int:
    """``__gfn_to_hva_many`` (kernel-notes §A.1), without the nr_pages output."""
    if slot is None or slot.flags & KVM_MEMSLOT_INVALID:
        return KVM_HVA_ERR_BAD
    if slot.readonly and write:
        return kvm_hva_err_ro_bad(page_shift)
    return slot.userspace_addr + ((gfn - slot.base_gfn) << page_shift)


def gfn_to_hva_memslot(slot: Memslot, gfn: int, page_shift: int) -> int:
    """``gfn_to_hva_memslot``: asks for write, so a read-only slot gives
    ``KVM_HVA_ERR_RO_BAD`` even for a read (kernel-notes §A.1)."""
    return gfn_to_hva_many(slot, gfn, True, page_shift)


def kvm_is_reserved_pfn(phys: PhysMem, pfn: int) -> bool:
    """``kvm_is_reserved_pfn`` (v4.16): PageReserved for a valid pfn, true for
    a pfn with no struct page.  The zero page is reserved (kernel-notes §L.1)."""
    if phys.pfn_valid(pfn):
        return phys.PageReserved(pfn)
    return True


def kvm_get_pfn(phys: PhysMem, pfn: int) -> None:
    """``kvm_get_pfn``: get_page unless reserved (no check of a zero count)."""
    if not kvm_is_reserved_pfn(phys, pfn):
        phys.get_page(pfn)


def kvm_release_pfn_clean(phys: PhysMem, pfn: int) -> None:
    """``kvm_release_pfn_clean``: put_page unless an error pfn or reserved."""
    if not is_error_noslot_pfn(pfn) and not kvm_is_reserved_pfn(phys, pfn):
        phys.put_page(pfn)


def kvm_set_pfn_dirty(phys: PhysMem, pfn: int) -> None:
    """``kvm_set_pfn_dirty``: SetPageDirty unless reserved."""
    if not kvm_is_reserved_pfn(phys, pfn):
        phys.SetPageDirty(pfn)


def kvm_release_pfn_dirty(phys: PhysMem, pfn: int) -> None:
    """``kvm_release_pfn_dirty``: mark dirty, then release clean."""
    kvm_set_pfn_dirty(phys, pfn)
    kvm_release_pfn_clean(phys, pfn)


def kvm_try_get_pfn(phys: PhysMem, pfn: int) -> bool:
    """``kvm_try_get_pfn`` (f8be156be163, 5.13): true for a reserved pfn
    (no reference taken), else ``get_page_unless_zero`` on the page itself."""
    if kvm_is_reserved_pfn(phys, pfn):
        return True
    return phys.get_page_unless_zero(pfn)
