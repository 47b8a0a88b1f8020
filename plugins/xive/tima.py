"""The XIVE thread interrupt management area, OS ring only (kernel-notes
§G.3; QEMU ``hw/intc/xive.c`` ``xive_tctx_*``).

The TIMA is one MMIO page per view; what it shows depends on the hardware
thread that accesses it, i.e. on the vcpu running there.  So the model keeps
one :class:`OsRing` per vcpu and the one TIMA frame routes to the accessing
vcpu's ring.
"""

from __future__ import annotations

from typing import Final

from attrs import define

# QW1 (OS ring) register offsets: the ring starts at 0x10
TM_QW1_OS: Final = 0x10
TM_NSR: Final = 0x0
TM_CPPR: Final = 0x1
TM_IPB: Final = 0x2
TM_LSMFB: Final = 0x3
TM_ACK_CNT: Final = 0x4
TM_INC: Final = 0x5
TM_AGE: Final = 0x6
TM_PIPR: Final = 0x7
TM_QW1_NSR_EO: Final = 0x80  # exception outstanding for the OS
TM_SPC_ACK_OS_REG: Final = 0x810  # special op: accept the OS interrupt (2-byte load)
XIVE_PRIORITY_MAX: Final = 7
NO_PRIORITY: Final = 0xFF


def priority_to_ipb(priority: int) -> int:
    """IPB bit of a priority (0 is the most favoured, the top bit)."""
    return 1 << (7 - priority) if priority <= XIVE_PRIORITY_MAX else 0


def ipb_to_pipr(ipb: int) -> int:
    """Most favoured pending priority, 0xff when nothing is pending."""
    if not ipb:
        return NO_PRIORITY
    return 8 - ipb.bit_length()


@define(slots=True)
class OsRing:
    """QW1 of one thread context (bytes NSR .. PIPR) and the line to the vcpu.

    ``cppr`` starts at 0xff: the guest kernel opens its CPPR when it sets up
    each cpu (``xive_setup_cpu``), which happens before any scenario step.
    """

    nsr: int = 0
    cppr: int = NO_PRIORITY
    ipb: int = 0
    lsmfb: int = 0
    ack_cnt: int = 0
    inc: int = 0
    age: int = 0
    pipr: int = NO_PRIORITY
    line: bool = False  # the OS external interrupt is raised

    def regs(self) -> bytes:
        """The 8 bytes of QW1 word 0-1, in offset order."""
        return bytes(
            (
                self.nsr,
                self.cppr,
                self.ipb,
                self.lsmfb,
                self.ack_cnt,
                self.inc,
                self.age,
                self.pipr,
            )
        )

    def notify(self) -> None:
        """``xive_tctx_notify``: signal when the pending priority beats CPPR."""
        if self.pipr < self.cppr:
            self.nsr |= TM_QW1_NSR_EO
            self.line = True

    def pipr_update(self, priority: int) -> None:
        """``xive_tctx_ipb_update``: record a pending priority, recompute PIPR, notify."""
        self.ipb |= priority_to_ipb(priority)
        self.pipr = ipb_to_pipr(self.ipb)
        self.notify()

    def accept(self) -> int:
        """``xive_tctx_accept`` (TM_SPC_ACK_OS_REG): lower the line; if an
        exception is outstanding, CPPR takes the pending priority, whose IPB
        bit is cleared.  Returns ``(NSR before << 8) | CPPR after``."""
        nsr = self.nsr
        self.line = False
        if nsr & TM_QW1_NSR_EO:
            self.cppr = self.pipr
            self.ipb &= ~priority_to_ipb(self.cppr) & 0xFF
            self.pipr = ipb_to_pipr(self.ipb)
            self.nsr &= ~TM_QW1_NSR_EO & 0xFF
        return (nsr << 8) | self.cppr

    def set_cppr(self, cppr: int) -> None:
        """``xive_tctx_set_cppr``: anything above priority 7 means 0xff."""
        self.cppr = NO_PRIORITY if cppr > XIVE_PRIORITY_MAX else cppr
        self.pipr = ipb_to_pipr(self.ipb)
        self.notify()
