"""The full schema parses to the right values; sizes; the builtin library."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmsim.errors import ScenarioError
from kvmsim.scenario import (
    OUTCOMES,
    RACE_POINTS,
    VERDICTS,
    DeviceSpec,
    Expect,
    MemslotSpec,
    Params,
    Scenario,
    StepKind,
    StepSpec,
    VmaSpec,
    builtin_scenarios,
    format_size,
    load_scenario,
    parse_scenario,
    parse_size,
)

EXAMPLE = Path(__file__).parent / "data" / "full_example.toml"
K, M, G = 1 << 10, 1 << 20, 1 << 30


@pytest.fixture
def example() -> Scenario:
    return load_scenario(EXAMPLE, devices=["xive"], arches=["ppc_radix", "ppc_hpt"])


def test_full_example_top_level(example: Scenario) -> None:
    assert example.name == "anon-write-first-touch"
    assert example.description == "A guest store to untouched anonymous memory."
    assert example.arch == "ppc_radix"
    assert example.source == str(EXAMPLE)


def test_full_example_vmas(example: Scenario) -> None:
    assert example.vmas == (
        VmaSpec(
            name="ram",
            size=64 * M,
            backing="anon",
            prot="rw",
            shared=False,
            huge=2 * M,
            populate=False,
            device=None,
            pgoff=0,
            pfn_kind=None,
            fault_retry=0,
        ),
        VmaSpec(
            name="esb",
            size=64 * K,
            backing="device",
            prot="rw",
            shared=True,
            huge=0,
            populate=False,
            device="xive",
            pgoff=0x10,
            pfn_kind=None,
            fault_retry=0,
        ),
        VmaSpec(
            name="bar",
            size=128 * K,
            backing="pfnmap_fault",
            prot="rwx",
            shared=False,
            huge=0,
            populate=False,
            device=None,
            pgoff=0,
            pfn_kind="ram_unrefcounted",
            fault_retry=2,
        ),
    )
    assert example.vma("esb").device == "xive"
    with pytest.raises(KeyError):
        example.vma("nope")


def test_full_example_memslots(example: Scenario) -> None:
    assert example.memslots == (
        MemslotSpec(index=0, gpa=0, vma="ram", offset=0, size=64 * M, readonly=False),
        # size defaults to the rest of the vma
        MemslotSpec(index=1, gpa=4 * G, vma="bar", offset=64 * K, size=64 * K, readonly=True),
    )


def test_full_example_devices(example: Scenario) -> None:
    (xive,) = example.devices
    assert xive == DeviceSpec(
        "xive", {"sources": 16, "mode": "exploitation", "priorities": (0, 6, 7)}
    )
    assert xive.get("sources") == 16
    assert xive.get("missing", 7) == 7
    assert xive.params["priorities"] == (0, 6, 7)  # arrays become tuples
    assert example.device("xive") is xive


def test_full_example_steps(example: Scenario) -> None:
    s = example.steps
    assert [step.index for step in s] == list(range(len(s)))
    assert s[0] == StepSpec(
        index=0,
        do="access",
        vcpu=0,
        gpa=0x10000,
        op="write",
        expect=Expect(outcome="mapped", writable=True, frame="host", page_size=64 * K),
    )
    assert s[1] == StepSpec(
        index=1, do="munmap", vma="ram", offset=0, size=64 * K, at="after_hva_to_pfn"
    )
    assert s[2].vcpu == 1 and s[2].op == "read"
    assert s[2].expect == Expect(outcome="efault", frame="none", verdicts=())
    assert s[3] == StepSpec(
        index=3,
        do="mprotect",
        vma="ram",
        offset=2 * M,
        size=2 * M,
        prot="r",
        expect=Expect(verdicts=("stale_mapping", "refcount_leak")),
    )
    # poison and host_write default to one page, range steps to the rest of the vma
    assert (s[4].do, s[4].offset, s[4].size) == ("poison", 3 * M, 4 * K)
    assert s[5] == StepSpec(
        index=5, do="device_reset", at="before_create_pte", params={"device": "xive", "source": 3}
    )
    assert s[6].expect == Expect(outcome="mapped", writable=False, frame=0x12345, page_size=64 * K)
    assert (s[7].do, s[7].offset, s[7].size) == ("migrate", 4 * M, 60 * M)
    assert (s[8].do, s[8].offset, s[8].size) == ("split_thp", 0, 2 * M)
    assert (s[9].do, s[9].size, s[9].at) == ("host_write", 4 * K, "mmap_sem_dropped")
    assert s[10].vcpu == 3


def test_field_types(example: Scenario) -> None:
    for step in example.steps:
        assert type(step.vcpu) is int and type(step.offset) is int
        assert step.size is None or type(step.size) is int
        assert isinstance(step.params, Params)
    for vma in example.vmas:
        assert type(vma.size) is int and type(vma.huge) is int
    assert isinstance(example.vmas, tuple) and isinstance(example.steps, tuple)


def test_scenario_is_frozen_and_hashable(example: Scenario) -> None:
    again = load_scenario(EXAMPLE)
    assert again == example
    assert hash(again) == hash(example)
    assert len({example, again}) == 1
    with pytest.raises(AttributeError):
        example.name = "x"  # type: ignore[misc]


def test_defaults() -> None:
    s = parse_scenario(
        'name = "d"\n'
        '[[vma]]\nname = "m"\nsize = 65536\nbacking = "pfnmap_linear"\n'
        '[[vma]]\nname = "f"\nsize = "1G"\nbacking = "hugetlbfs"\nhuge = "1G"\n'
        '[[memslot]]\ngpa = 0\nvma = "f"\n',
        "d.toml",
    )
    m, f = s.vmas
    assert s.description == "" and s.arch is None
    assert (m.prot, m.shared, m.populate, m.pgoff, m.fault_retry) == ("rw", False, False, 0, 0)
    assert m.pfn_kind == "mmio"  # defaulted on the pfnmap backings only
    assert f.pfn_kind is None and f.huge == G
    assert s.memslots[0] == MemslotSpec(0, 0, "f", 0, G, False)
    assert s.steps == ()


def test_empty_expect_checks_nothing() -> None:
    s = parse_scenario(
        'name = "e"\n[[step]]\ndo = "access"\ngpa = 0\nop = "read"\nexpect = {}\n', "e.toml"
    )
    assert s.steps[0].expect == Expect()


def test_plugin_step_kind() -> None:
    kind = StepKind(
        "esb_load",
        {"device": str, "source": int, "ea": (int, str), "vcpu": int, "gpa": int},
        required=("source",),
        faults=True,
    )
    s = parse_scenario(
        'name = "p"\n[[device]]\nkind = "xive"\n'
        '[[step]]\ndo = "device_reset"\ndevice = "xive"\nat = "before_create_pte"\n'
        '[[step]]\ndo = "esb_load"\ndevice = "xive"\nsource = 2\nea = "0x800"\nvcpu = 1\n'
        'gpa = 0x2000\nexpect = { outcome = "mmio" }\n',
        "p.toml",
        step_kinds={"esb_load": kind},
    )
    step = s.steps[1]
    assert (step.vcpu, step.gpa) == (1, 0x2000)  # core keys land in attributes
    assert step.params == {"device": "xive", "source": 2, "ea": "0x800"}
    assert step.expect == Expect(outcome="mmio")  # faults=True: full expect


def test_public_tuples() -> None:
    # the original three keep their names and order, then the placement
    # across_create_pte; the yield points of concurrent exploration follow
    assert RACE_POINTS[:4] == (
        "after_hva_to_pfn",
        "before_create_pte",
        "mmap_sem_dropped",
        "across_create_pte",
    )
    assert set(OUTCOMES) == {
        "mapped",
        "mmio",
        "efault",
        "sigbus",
        "oops",
        "livelock",
        "deadlock",
        "guest_fault",
    }
    assert VERDICTS[11] == "outside_memslot"
    assert VERDICTS[12:] == ("lost_dirty", "dirty_log_overflow")


def test_params_behave_like_a_frozen_dict() -> None:
    p = Params.of({"b": [1, {"c": 2}], "a": 1})
    assert p == {"a": 1, "b": (1, {"c": 2})}
    assert list(p) == ["a", "b"] and len(p) == 2
    assert p.get("zz") is None
    assert hash(p) == hash(Params.of({"a": 1, "b": [1, {"c": 2}]}))
    with pytest.raises(KeyError):
        p["zz"]


@pytest.mark.parametrize(
    ("value", "n"),
    [
        (4096, 4096),
        ("4K", 4096),
        ("64k", 64 * K),
        ("2M", 2 * M),
        ("1G", G),
        ("8192", 8192),
        (0x10000, 64 * K),
    ],
)
def test_parse_size(value: object, n: int) -> None:
    assert parse_size(value, "x") == n


@pytest.mark.parametrize("value", [True, 1.0, None, "1T", "1.5M", "K", " 4K", 0, -4096, 100])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_size(value, "vma[0].size", file="f.toml")
    assert str(info.value).startswith("f.toml: vma[0].size: ")


def test_parse_size_alignment_is_a_parameter() -> None:
    assert parse_size("1K", "k", align=1024) == 1024


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (64 * K, "64K"),
        (2 * M, "2M"),
        (G, "1G"),
        (3 * G, "3G"),
        (1536 * K, "1536K"),
        (4096 + 1, "4097"),
        (0, "0"),
        (1024 * G, "1024G"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text
    if n > 0 and n % 4096 == 0:
        assert parse_size(text, "x") == n


def test_builtin_scenarios_are_sorted_toml_paths() -> None:
    found = builtin_scenarios()
    assert found == sorted(found)
    assert all(isinstance(p, Path) and p.suffix == ".toml" and p.is_file() for p in found)


def test_access_may_give_an_effective_address() -> None:
    s = parse_scenario(
        'name = "ea"\n[[step]]\ndo = "access"\ngpa = 0x2000\nea = 0xc000000000002000\n'
        'op = "read"\n',
        "ea.toml",
    )
    assert s.steps[0].params == {"ea": 0xC000000000002000}
