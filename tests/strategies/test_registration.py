"""All eight strategies are entry points with arches, a description and the
fault-handler versions their kernels had (kernel-semantics B, C, D, E)."""

from __future__ import annotations

import pytest

from kvmsim.registry import build_manager, discover, info_of, load

EXPECTED = {
    # name: (arches, handler per arch)
    "ppc_original": (
        ("ppc_radix", "ppc_radix_4k", "ppc_hpt"),
        {"ppc_radix": "v4.15", "ppc_hpt": "v4.15"},
    ),
    "cedric_rfc": (("ppc_radix", "ppc_radix_4k"), {"ppc_radix": "v4.15"}),
    "cedric_reviewed": (("ppc_radix", "ppc_radix_4k"), {"ppc_radix": "v4.15"}),
    "paolo_refactor": (("*",), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "x86_ept": "v4.16"}),
    "generic_v4_16": (("*",), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "x86_ept": "v4.16"}),
    "upstream_final": (
        ("ppc_radix", "ppc_radix_4k", "ppc_hpt"),
        {"ppc_radix": "v4.17", "ppc_hpt": "v5.7"},
    ),
    "refcount_guarded": (("*",), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "x86_ept": "v5.13"}),
    # every arch has a v6.13 handler releasing exactly refcounted_page (E step 9)
    "follow_pfn_2024": (
        ("*",),
        {"ppc_radix": "v6.13", "ppc_radix_4k": "v6.13", "ppc_hpt": "v6.13", "x86_ept": "v6.13"},
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strategy_entry_point(name: str) -> None:
    info = info_of("strategy", load(discover()["strategy"][name]))
    arches, handlers = EXPECTED[name]
    assert info.name == name and info.description and info.kernel
    assert info.arches == arches
    for arch, version in handlers.items():
        assert info.handler_for(arch) == version


@pytest.mark.parametrize("arch", ["ppc_radix", "ppc_radix_4k"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strategy_selectable_on_radix(name: str, arch: str) -> None:
    # every strategy that runs on 64K radix runs on the 4K variant too
    _, _, info = build_manager(arch=arch, strategy=name)
    assert info.name == name
