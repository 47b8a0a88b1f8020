"""Plugin discovery through entry points, with clear errors."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmsim import registry
from kvmsim.errors import PluginError


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    registry.reset_cache()
    yield
    registry.reset_cache()


def fake_dist(
    tmp: Path, name: str, entry_points: str, modules: dict[str, str] | None = None
) -> None:
    """A ``*.dist-info`` with entry points (and optional modules) in ``tmp``."""
    info = tmp / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for mod, src in (modules or {}).items():
        (tmp / f"{mod}.py").write_text(textwrap.dedent(src))


def test_builtin_plugins_are_discovered() -> None:
    found = registry.discover()
    assert "ppc_radix" in found["arch"]
    assert "generic_v4_16" in found["strategy"]
    assert found["arch"]["ppc_radix"].dist == "kvmsim"


def test_unknown_name_lists_close_matches_and_available() -> None:
    with pytest.raises(PluginError) as e:
        registry.lookup("strategy", "generic_v416")
    msg = str(e.value)
    assert "generic_v4_16" in msg and "did you mean" in msg and "Available:" in msg


def test_broken_entry_point_names_it_its_distribution_and_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dist(tmp_path, "brokenplug", "[kvmsim.arch]\nbroken = brokenplug_nowhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset_cache()
    with pytest.raises(PluginError) as e:
        registry.load(registry.lookup("arch", "broken"))
    msg = str(e.value)
    assert "'broken'" in msg and "brokenplug 1.0" in msg
    assert "brokenplug_nowhere" in msg and "ModuleNotFoundError" in msg
    rows = {r["name"]: r for r in registry.describe_all()}
    assert "error" in rows["broken"]


def test_same_name_from_two_distributions_is_an_error_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dist(tmp_path, "otherplug", "[kvmsim.arch]\nppc_radix = otherplug_mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset_cache()
    with pytest.raises(PluginError) as e:
        registry.load(registry.lookup("arch", "ppc_radix"))
    msg = str(e.value)
    assert "kvmsim" in msg and "otherplug 1.0" in msg


STRAT = """
from kvmsim import hookimpl
from kvmsim.hooktypes import StrategyInfo

@hookimpl
def strategy_info():
    return StrategyInfo(name="x86only", description="d", arches=("x86_ept",))
"""


def test_strategy_for_another_arch_is_refused_with_its_arches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dist(
        tmp_path, "x86only", "[kvmsim.strategy]\nx86only = x86only_mod\n", {"x86only_mod": STRAT}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset_cache()
    with pytest.raises(PluginError) as e:
        registry.build_manager(arch="ppc_radix", strategy="x86only")
    assert "applies to: x86_ept" in str(e.value)


def test_misspelled_hook_is_rejected_at_registration() -> None:
    from kvmsim import hookimpl

    class Bad:
        @hookimpl
        def hva_to_pnf(self, kvm, request):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(PluginError) as e:
        registry.build_manager(arch="ppc_radix", strategy="generic_v4_16", extra_plugins=[Bad()])
    assert "hva_to_pnf" in str(e.value)


def test_wrong_argument_is_rejected_at_registration() -> None:
    from kvmsim import hookimpl

    class Bad:
        @hookimpl
        def translate(self, kvm, gva):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(PluginError) as e:
        registry.build_manager(arch="ppc_radix", strategy="generic_v4_16", extra_plugins=[Bad()])
    assert "gva" in str(e.value)


def test_dispatcher_calls_a_single_hot_impl_directly() -> None:
    pm, _, _ = registry.build_manager(arch="ppc_radix", strategy="generic_v4_16")
    d = registry.Dispatcher(pm)
    import kvmsim_plugins.strategies.generic_v4_16 as g

    assert d.hva_to_pfn is g.hva_to_pfn
    d2 = registry.Dispatcher(pm, direct=False)
    assert d2.hva_to_pfn is pm.hook.hva_to_pfn


def test_relay_calls_broadcast_hooks_as_pluggy_does() -> None:
    """The dispatcher's relay answers every hook as pluggy would: the same
    order (last registered first, tryfirst/trylast honoured), None answers
    dropped, firstresult stopping early; a hook with a wrapper stays pluggy's."""
    from kvmsim import hookimpl

    calls: list[str] = []

    class Early:
        @hookimpl(tryfirst=True)
        def notifier_age(self, kvm, start, end):  # type: ignore[no-untyped-def]
            calls.append("early")
            return True

    class Quiet:
        @hookimpl
        def notifier_age(self, kvm, start):  # type: ignore[no-untyped-def]
            calls.append("quiet")
            return None

    class Wrap:
        @hookimpl(wrapper=True)
        def stage2_mappings(self, kvm):  # type: ignore[no-untyped-def]
            return (yield)

    pm, _, _ = registry.build_manager(
        arch="x86_ept", strategy="generic_v4_16", extra_plugins=[Quiet(), Early(), Wrap()]
    )
    relay = registry.Dispatcher(pm).hook
    assert relay.stage2_mappings is pm.hook.stage2_mappings
    assert relay.notifier_age is not pm.hook.notifier_age
    args = {"kvm": None, "start": 0, "end": 1 << 12}
    got = relay.notifier_age(**args)
    order = calls[:]
    calls.clear()
    want = pm.hook.notifier_age(**args)
    assert calls == order and order[0] == "early" and "quiet" in order
    assert got == want
