"""The ground truth of dirty logging (kvmsim/kvm/ledger.py) against a
brute-force oracle: random sequences of guest stores and harvests (some
reporting too little), each store judged on its own by walking the harvests
after it (issue 23, point 3)."""

from __future__ import annotations

import random

import pytest

from kvmsim.kvm.ledger import StoreLedger

PAGES = 6
SLOT = 0

# An event: ("store", page, during) — during: a harvest is in progress —
# or ("harvest", kind, reported, seq) with kind consume / peek / clear.
Event = tuple[object, ...]


def _random_run(rng: random.Random, manual: bool) -> list[Event]:
    """Stores and harvests; a store may fall inside a harvest (another vcpu
    while the ioctl runs).  Harvests report a random superset or subset of
    the truth, so that some lose pages."""
    events: list[Event] = []
    seq = 0
    for _ in range(rng.randint(1, 25)):
        if rng.random() < 0.55:
            events.append(("store", rng.randrange(PAGES), False))
            continue
        seq += 1
        kind = rng.choice(("peek", "clear")) if manual else "consume"
        reported = frozenset(p for p in range(PAGES) if rng.random() < 0.6)
        for _ in range(rng.randint(0, 2)):  # stores while it runs
            events.append(("store", rng.randrange(PAGES), True, seq))
        events.append(("harvest", kind, reported, seq))
    return events


def _ledger(events: list[Event]) -> set[tuple[int, int]]:
    led = StoreLedger()
    led.start(SLOT)
    began: set[object] = set()
    for e in events:
        if e[0] == "store":
            if e[2] and e[3] not in began:  # the harvest it overlaps begins first
                began.add(e[3])
                led.begin((SLOT,))
            led.store(SLOT, int(e[1]))  # type: ignore[call-overload]
            continue
        _, kind, reported, seq = e
        if seq not in began:
            began.add(seq)
            led.begin((SLOT,))
        rep = set(reported)  # type: ignore[call-overload]
        if kind == "consume":
            led.consume(SLOT, rep, int(seq), "get")  # type: ignore[call-overload]
        elif kind == "peek":
            led.peek(SLOT, rep, int(seq), "get")  # type: ignore[call-overload]
        else:
            led.cleared(SLOT, rep)
    return {(lp.rel, lp.harvest) for lp in led.lost}


def _oracle(events: list[Event]) -> set[tuple[int, int]]:
    """Each store alone: the harvests after it (or the one it overlaps,
    from its end) decide.  Fetch-and-clear: the first harvest that ends
    after the store must report it, or, for a store during that harvest,
    it or the next one.  Manual protect: every get after it must report it
    until a clear passes its page."""
    lost: set[tuple[int, int]] = set()
    harvests = [(i, e) for i, e in enumerate(events) if e[0] == "harvest"]
    for i, e in enumerate(events):
        if e[0] != "store":
            continue
        page = e[1]
        after = [(j, h) for j, h in harvests if j > i]
        if not after:
            continue
        during = bool(e[2])
        if after[0][1][1] == "consume":
            first = after[0][1]
            if page in first[2]:  # type: ignore[operator]
                continue
            if not during:
                lost.add((int(page), int(first[3])))  # type: ignore[call-overload]
            elif len(after) > 1 and page not in after[1][1][2]:  # type: ignore[operator]
                lost.add((int(page), int(after[1][1][3])))  # type: ignore[call-overload]
            continue
        for k, (_, h) in enumerate(after):
            if k == 0 and during and h[1] == "peek":
                continue  # the get it overlaps may not have seen it
            if h[1] == "clear":
                if page in h[2]:  # type: ignore[operator]
                    break
                continue
            if page not in h[2]:  # type: ignore[operator]
                lost.add((int(page), int(h[3])))  # type: ignore[call-overload]
                break
    return lost


@pytest.mark.parametrize("manual", [False, True], ids=["get", "manual"])
def test_ledger_matches_the_oracle(manual: bool) -> None:
    for seed in range(400):
        events = _random_run(random.Random(seed), manual)
        assert _ledger(events) == _oracle(events), (seed, events)


def test_a_store_before_a_harvest_that_misses_it_is_lost_once() -> None:
    led = StoreLedger()
    led.start(0)
    led.store(0, 3)
    led.store(0, 3)
    n = led.begin((0,))
    j = led.consume(0, {1}, n, "KVM_GET_DIRTY_LOG")
    assert j.lost == (3,) and j.spurious == 1  # page 1: reported, never stored
    n = led.begin((0,))
    assert led.consume(0, set(), n, "KVM_GET_DIRTY_LOG").lost == ()
    assert [(lp.rel, lp.harvest) for lp in led.lost] == [(3, 1)]


def test_a_store_during_a_harvest_may_wait_for_the_next() -> None:
    led = StoreLedger()
    led.start(0)
    n = led.begin((0,))
    led.store(0, 2)  # another vcpu, after the harvest read that word
    assert led.consume(0, set(), n, "get").lost == ()
    n = led.begin((0,))
    assert led.consume(0, set(), n, "get").lost == (2,)


def test_stores_on_a_slot_that_does_not_log_are_not_judged() -> None:
    led = StoreLedger()
    led.store(0, 1)
    led.start(1)
    n = led.begin((0, 1))
    assert led.consume(0, set(), n, "get").lost == ()
    led.stop(1)
    led.store(1, 1)
    assert led.lost == []
