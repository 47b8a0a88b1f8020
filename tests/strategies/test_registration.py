"""All eight strategies are entry points with arches, a description and the
fault-handler versions their kernels had (kernel-semantics B, C, D, E)."""

from __future__ import annotations

import pytest

from kvmsim.registry import build_manager, discover, info_of, load

EXPECTED = {
    # name: (arches, handler per arch)
    "ppc_original": (("ppc_radix", "ppc_hpt"), {"ppc_radix": "v4.15", "ppc_hpt": "v4.15"}),
    "cedric_rfc": (("ppc_radix",), {"ppc_radix": "v4.15"}),
    "cedric_reviewed": (("ppc_radix",), {"ppc_radix": "v4.15"}),
    "paolo_refactor": (("*",), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "x86_ept": "v4.16"}),
    "generic_v4_16": (("*",), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "x86_ept": "v4.16"}),
    "upstream_final": (("ppc_radix", "ppc_hpt"), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7"}),
    "refcount_guarded": (("*",), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "x86_ept": "v4.16"}),
    # v6.13 handlers do not exist yet: the latest ones stand in (see its docstring)
    "follow_pfn_2024": (("*",), {"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "x86_ept": "v4.16"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strategy_entry_point(name: str) -> None:
    info = info_of("strategy", load(discover()["strategy"][name]))
    arches, handlers = EXPECTED[name]
    assert info.name == name and info.description and info.kernel
    assert info.arches == arches
    for arch, version in handlers.items():
        assert info.handler_for(arch) == version


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strategy_selectable_on_radix(name: str) -> None:
    _, _, info = build_manager(arch="ppc_radix", strategy=name)
    assert info.name == name
