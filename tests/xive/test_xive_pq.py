"""The ESB PQ state machine and the TIMA OS ring, against tables worked out
from the architecture's definition (kernel-semantics G.1, G.3)."""

from __future__ import annotations

import pytest
from kvmsim_plugins.xive import esb
from kvmsim_plugins.xive.tima import TM_QW1_NSR_EO, OsRing, ipb_to_pipr, priority_to_ipb

# G.1: P = an event was forwarded and not yet EOIed, Q = another event came
# meanwhile; 01 is "off".  A trigger forwards only from 00 (sets P); while P
# is set it only records Q; off drops it.  EOI clears P; if Q was set the
# coalesced event is forwarded at once, so P stays set and Q clears (11 -> 10,
# notify); off stays off.
#           old PQ: (trigger -> new, notify), (EOI -> new, notify)
PQ_TABLE = {
    0b00: ((0b10, True), (0b00, False)),
    0b10: ((0b11, False), (0b00, False)),
    0b11: ((0b11, False), (0b10, True)),
    0b01: ((0b01, False), (0b01, False)),
}


@pytest.mark.parametrize("old", sorted(PQ_TABLE))
def test_trigger_and_eoi_follow_the_g1_table(old: int) -> None:
    want_trigger, want_eoi = PQ_TABLE[old]
    assert esb.esb_trigger(old) == want_trigger
    assert esb.esb_eoi(old) == want_eoi


def test_set_pq_offsets_are_the_xive_regs_values() -> None:
    # xive-regs.h: SET_PQ_00 0xc00, 01 0xd00, 10 0xe00, 11 0xf00
    assert [esb.set_pq_offset(pq) for pq in range(4)] == [0xC00, 0xD00, 0xE00, 0xF00]


def test_ipb_and_pipr() -> None:
    # G.3: priority p sets bit 1 << (7 - p); PIPR = most favoured (lowest) pending
    assert priority_to_ipb(0) == 0x80
    assert priority_to_ipb(7) == 0x01
    assert ipb_to_pipr(0) == 0xFF
    assert ipb_to_pipr(priority_to_ipb(6) | priority_to_ipb(3)) == 3


def test_accept_takes_the_pending_priority() -> None:
    # G.3: notify sets NSR.EO when PIPR < CPPR; ACK_OS_REG returns
    # (old NSR << 8) | new CPPR, CPPR = PIPR, that IPB bit cleared, EO cleared
    ring = OsRing()
    ring.pipr_update(6)
    assert ring.nsr == TM_QW1_NSR_EO and ring.line
    assert ring.accept() == (TM_QW1_NSR_EO << 8) | 6
    assert ring.cppr == 6 and ring.ipb == 0 and ring.pipr == 0xFF and ring.nsr == 0
    # nothing outstanding: the accept changes nothing but reports CPPR
    assert ring.accept() == 6


def test_cppr_gates_delivery() -> None:
    # G.3: a priority not more favoured than CPPR is recorded in IPB but not signalled
    ring = OsRing()
    ring.set_cppr(3)
    ring.pipr_update(5)
    assert ring.nsr == 0 and ring.ipb == priority_to_ipb(5)
    ring.set_cppr(0xFF)  # opening CPPR re-notifies
    assert ring.nsr == TM_QW1_NSR_EO
    ring.set_cppr(9)  # > 7 means 0xff
    assert ring.cppr == 0xFF
