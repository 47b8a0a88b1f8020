"""Trace values as people read them (issue 22, item 10)."""

from __future__ import annotations

import re

from kvmsim.host import constants as c
from kvmsim.report.diff import event_text
from kvmsim.report.fields import format_value


def test_vm_flags_decode_into_names() -> None:
    flags = c.VM_READ | c.VM_WRITE | c.VM_SHARED | c.VM_IO | c.VM_PFNMAP
    assert format_value("mmap", "vm_flags", flags) == "VM_READ|VM_WRITE|VM_SHARED|VM_PFNMAP|VM_IO"


def test_unknown_bits_are_kept_in_hex() -> None:
    assert format_value("mmap", "vm_flags", c.VM_READ | 1 << 40) == f"VM_READ|{hex(1 << 40)}"
    assert format_value("mmap", "vm_flags", 0) == "0"


def test_flags_mean_what_the_event_says() -> None:
    assert format_value("get_user_pages", "flags", c.FOLL_WRITE | c.FOLL_HWPOISON) == (
        "FOLL_WRITE|FOLL_HWPOISON"
    )
    assert format_value("handle_mm_fault", "flags", c.FAULT_FLAG_WRITE) == "FAULT_FLAG_WRITE"
    assert format_value("handle_mm_fault", "result", c.VM_FAULT_NOPAGE) == "VM_FAULT_NOPAGE"
    assert format_value("fixup_user_fault", "fault_flags", c.FAULT_FLAG_TRIED) == (
        "FAULT_FLAG_TRIED"
    )
    assert format_value("check_vma_flags", "gup_flags", c.FOLL_GET) == "FOLL_GET"


def test_addresses_pfns_in_hex_sizes_with_units_counts_in_decimal() -> None:
    assert format_value("mmap", "start", 268435456) == "0x10000000"
    assert format_value("follow_pfn", "pfn", 4194307) == "0x400003"
    assert format_value("radix_pte", "pte_size", 65536) == "64K"
    assert format_value("x", "size", 2 << 20) == "2M"
    assert format_value("x", "ret", -14) == "-14"
    assert format_value("x", "nr_pages", 16) == "16"
    assert format_value("x", "hva", "0x10") == "0x10"  # strings are left alone


def test_a_mmap_event_has_no_decimal_address() -> None:
    text = event_text(
        {"event": "mmap", "start": 268435456, "end": 268959744, "vm_flags": 17659, "seq": 1}
    )
    assert "start=0x10000000" in text and "end=0x10080000" in text
    assert not re.search(r"=\d{5,}", text), text


def test_a_register_image_returned_is_hex_an_errno_is_not() -> None:
    assert format_value("kvmppc_hpte_hv_fault", "ret", 0x42000000) == "0x42000000"
    assert format_value("kvmppc_hpte_hv_fault", "ret", -2) == "-2"
