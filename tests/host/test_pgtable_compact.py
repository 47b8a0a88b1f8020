"""The compact base-PTE store behaves exactly as the ``dict[vpn, pte]`` it
replaced (performance round 2): same answers for get/in/[]/pop/len and the
same entries in vpn order, including a stored 0 (present, unlike an absent
key) and values too large for an array slot."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmsim.host.pgtable import PageTable, PteMap

_VPN = st.integers(min_value=0, max_value=4 * 512 + 7)
_PTE = st.one_of(
    st.integers(min_value=0, max_value=1 << 20),
    st.sampled_from([0, (1 << 64) - 2, (1 << 64) - 1, 1 << 70, -1]),
)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _VPN, _PTE),
        st.tuples(st.just("pop"), _VPN, st.none()),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(_OPS, _VPN, _VPN)
def test_ptemap_matches_dict(ops: list[tuple[str, int, int | None]], lo: int, hi: int) -> None:
    m = PteMap()
    d: dict[int, int] = {}
    for op, vpn, pte in ops:
        if op == "set":
            assert pte is not None
            m[vpn] = pte
            d[vpn] = pte
        else:
            assert m.pop(vpn, None) == d.pop(vpn, None)
    for vpn in range(0, 4 * 512 + 8):
        assert m.get(vpn) == d.get(vpn)
        assert (vpn in m) == (vpn in d)
    assert len(m) == len(d)
    assert bool(m) == bool(d)
    assert list(m.items()) == sorted(d.items())
    assert list(m.items_in(lo, hi)) == sorted((k, v) for k, v in d.items() if lo <= k < hi)


def test_ptes_in_and_freed_regions() -> None:
    pt = PageTable(12)
    for i in range(600):
        pt.set_pte(0x1000_0000 + (i << 12), (i << 16) | 1)
    assert len(pt.ptes_in(0x1000_0000 + (510 << 12), 0x1000_0000 + (514 << 12))) == 4
    for i in range(600):
        assert pt.clear_pte(0x1000_0000 + (i << 12)) == (i << 16) | 1
    # every region's array went with its last entry (no per-region leftovers)
    assert not pt.ptes and not pt.ptes._regions


_FILL_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _VPN, st.integers(0, 1 << 20)),
        st.tuples(st.just("pop"), _VPN, st.none()),
        st.tuples(st.just("fill"), _VPN, st.tuples(st.integers(1, 1100), st.integers(0, 1 << 20))),
        st.tuples(st.just("get"), _VPN, st.none()),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(_FILL_OPS, _VPN, _VPN)
def test_lazy_linear_fill_matches_dict(
    ops: list[tuple[str, int, object]], lo: int, hi: int
) -> None:
    """``fill_linear`` (remap_pfn_range's PTEs, built per region on first
    use) answers as the eagerly filled dict would, whatever comes after."""
    m = PteMap()
    m.touched = set()
    d: dict[int, int] = {}
    touched: set[int] = set()
    for op, vpn, arg in ops:
        if op == "set":
            assert isinstance(arg, int)
            m[vpn] = d[vpn] = arg
            touched.add(vpn)
        elif op == "pop":
            old = d.pop(vpn, None)
            assert m.pop(vpn, None) == old
            if old is not None:
                touched.add(vpn)
        elif op == "get":
            assert m.get(vpn) == d.get(vpn)
        else:
            assert isinstance(arg, tuple)
            n, pte = arg
            if any(v in d for v in range(vpn, vpn + n)):
                continue
            m.fill_linear(vpn, n, pte, 16)
            d.update((vpn + i, pte + 16 * i) for i in range(n))
            touched.update(range(vpn, vpn + n))
    assert len(m) == len(d)
    assert bool(m) == bool(d)
    assert list(m.items_in(lo, hi)) == sorted((k, v) for k, v in d.items() if lo <= k < hi)
    assert list(m.items()) == sorted(d.items())
    assert touched <= m.touched


def test_a_16g_linear_fill_costs_nothing_until_touched() -> None:
    m = PteMap()
    n = (16 << 30) >> 12  # 16G of 4K pages
    m.fill_linear(0x100000, n, 0x1000, 0x1000)
    assert len(m) == n and not m._regions  # no array built yet
    assert m.get(0x100000 + n - 1) == 0x1000 + (n - 1) * 0x1000
    assert len(m._regions) == 1
