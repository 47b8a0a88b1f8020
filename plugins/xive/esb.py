"""XIVE Event State Buffers: the PQ state machine and the ESB page offsets
(kernel-notes §G.1; ``arch/powerpc/include/asm/xive-regs.h`` for the
offsets, QEMU ``hw/intc/xive.c`` for what each load and store does).

Each source has two ESB pages: the even one triggers, the odd one is the
EOI/management page.  Only the low 12 bits of the offset into a page select
the operation (the 64K page repeats the 4K layout).
"""

from __future__ import annotations

from typing import Final

# PQ bits and the states QEMU names
ESB_VAL_P: Final = 0x2
ESB_VAL_Q: Final = 0x1
PQ_RESET: Final = 0b00  # enabled, nothing pending
PQ_OFF: Final = 0b01  # masked ("hard off")
PQ_PENDING: Final = 0b10  # an event was forwarded, not yet EOIed
PQ_QUEUED: Final = 0b11  # another event came while pending

# Management-page offsets (xive-regs.h)
XIVE_ESB_LOAD_EOI: Final = 0x000
XIVE_ESB_STORE_EOI: Final = 0x400
XIVE_ESB_GET: Final = 0x800
XIVE_ESB_SET_PQ_00: Final = 0xC00
XIVE_ESB_SET_PQ_01: Final = 0xD00
XIVE_ESB_SET_PQ_10: Final = 0xE00
XIVE_ESB_SET_PQ_11: Final = 0xF00

PQ_NAMES: Final = {PQ_RESET: "00", PQ_OFF: "01", PQ_PENDING: "10", PQ_QUEUED: "11"}


def esb_trigger(pq: int) -> tuple[int, bool]:
    """An event reaches the source (QEMU ``xive_esb_trigger``).

    :returns: ``(new PQ, notify)``: notify means "forward the event to the
        router", which only 00 → 10 does.  A pending source just records Q;
        a masked one (01) drops the event.
    """
    if pq == PQ_RESET:
        return PQ_PENDING, True
    if pq in (PQ_PENDING, PQ_QUEUED):
        return PQ_QUEUED, False
    return PQ_OFF, False


def esb_eoi(pq: int) -> tuple[int, bool]:
    """The EOI transition (QEMU ``xive_esb_eoi``).

    :returns: ``(new PQ, notify)``: an event that came while pending (11)
        leaves the source pending again (10) and is forwarded now; 00 and 10
        go to 00; a masked source stays masked.
    """
    if pq in (PQ_RESET, PQ_PENDING):
        return PQ_RESET, False
    if pq == PQ_QUEUED:
        return PQ_PENDING, True
    return PQ_OFF, False


def set_pq_offset(pq: int) -> int:
    """The management-page load offset that sets ``pq`` (SET_PQ_00 .. SET_PQ_11)."""
    return XIVE_ESB_SET_PQ_00 + (pq << 8)


def all_ones(size: int) -> int:
    """What an invalid MMIO load returns: -1 truncated to the access size."""
    return (1 << (8 * size)) - 1
