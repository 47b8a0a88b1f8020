"""Every malformed scenario gives one ScenarioError naming file and key path."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

from kvmsim.errors import PluginError, ScenarioError
from kvmsim.scenario import DeviceKind, StepKind, load_scenario, parse_scenario

FILE = "bad.toml"

HEAD = 'name = "t"\n'
RAM = """
[[vma]]
name = "ram"
size = "64M"
backing = "anon"
"""
SLOT = """
[[memslot]]
gpa = 0
vma = "ram"
"""
ACCESS = """
[[step]]
do = "access"
gpa = 0x1000
op = "read"
"""

XIVE = DeviceKind("xive", {"sources": int}, required=("sources",), reset_fields={"source": int})
ESB_LOAD = StepKind(
    "esb_load", {"device": str, "source": int, "vcpu": int}, required=("source",), faults=True
)


def vma(**kv: str) -> str:
    """A [[vma]] table; *kv* are TOML value texts."""
    keys = {"name": '"ram"', "size": '"64M"', "backing": '"anon"', **kv}
    return "\n[[vma]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v != "DROP")


def table(header: str, **kv: str) -> str:
    return f"\n[[{header}]]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())


def bad(
    text: str,
    key: str | None,
    *,
    devices: Collection[str] | Mapping[str, DeviceKind] | None = None,
    step_kinds: Mapping[str, StepKind] | None = None,
    arches: Collection[str] | None = None,
    says: str = "",
) -> ScenarioError:
    """Assert *text* fails with one ScenarioError at exactly *key*."""
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, FILE, devices=devices, step_kinds=step_kinds, arches=arches)
    err = info.value
    shown = str(err)
    assert type(err) is ScenarioError
    assert err.file == FILE
    assert err.key == key, shown
    assert shown.startswith(f"{FILE}: {key}: " if key else f"{FILE}: "), shown
    assert "\n" not in shown
    assert says in shown
    return err


# ---- TOML itself ---------------------------------------------------------


def test_toml_syntax_error_names_file_line_and_column() -> None:
    err = bad('name = "t"\nsize = = 3\n', None, says="line 2, column")
    assert "TOML syntax error" in str(err)


def test_toml_duplicate_key_is_a_syntax_error() -> None:
    bad('name = "t"\nname = "u"\n', None, says="line 2")


def test_huge_integer_literal_is_reported_not_raised() -> None:
    bad(HEAD + "x = " + "9" * 5000 + "\n", None)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(missing)
    assert str(missing) in str(info.value)
    assert "cannot read" in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    assert "UTF-8" in str(info.value)


# ---- unknown keys --------------------------------------------------------


def test_unknown_top_level_key() -> None:
    err = bad(HEAD + "colour = 1\n" + RAM, "colour", says="unknown key 'colour'")
    assert "memslot" in str(err)  # the expected keys are listed


def test_unknown_top_level_key_suggests_spelling() -> None:
    bad(HEAD + table("vmas", name='"x"'), "vmas", says="did you mean 'vma'?")


def test_odd_key_is_quoted_in_the_key_path() -> None:
    bad(HEAD + '"a.b\\n" = 1\n', '"a.b\\n"')


def test_unknown_vma_key() -> None:
    bad(HEAD + vma(sise='"4K"'), "vma[0].sise", says="did you mean 'size'?")


def test_unknown_memslot_key() -> None:
    bad(
        HEAD + RAM + table("memslot", gpa="0", vma='"ram"', readOnly="true"),
        "memslot[0].readOnly",
        says="did you mean 'readonly'?",
    )


def test_unknown_device_key_when_the_device_kind_is_described() -> None:
    bad(
        HEAD + table("device", kind='"xive"', sources="16", srcs="2"),
        "device[0].srcs",
        devices={"xive": XIVE},
    )


def test_device_keys_are_free_when_only_names_are_known() -> None:
    s = parse_scenario(HEAD + table("device", kind='"xive"', srcs="2"), FILE, devices=["xive"])
    assert s.devices[0].get("srcs") == 2


def test_unknown_step_key() -> None:
    bad(
        HEAD + RAM + table("step", do='"access"', gpa="0", op='"read"', gppa="1"),
        "step[0].gppa",
        says="did you mean 'gpa'?",
    )


def test_key_of_another_step_kind_is_unknown() -> None:
    bad(HEAD + RAM + table("step", do='"munmap"', vma='"ram"', vcpu="0"), "step[0].vcpu")


def test_unknown_expect_key() -> None:
    bad(
        HEAD + table("step", do='"access"', gpa="0", op='"read"', expect='{ outcom = "mapped" }'),
        "step[0].expect.outcom",
        says="did you mean 'outcome'?",
    )


# ---- missing keys --------------------------------------------------------


def test_missing_name() -> None:
    bad(RAM, "name", says="missing required key")


@pytest.mark.parametrize("key", ["name", "size", "backing"])
def test_missing_vma_key(key: str) -> None:
    bad(HEAD + vma(**{key: "DROP"}), f"vma[0].{key}", says="missing required key")


@pytest.mark.parametrize("key", ["gpa", "vma"])
def test_missing_memslot_key(key: str) -> None:
    kv = {"gpa": "0", "vma": '"ram"'}
    del kv[key]
    bad(HEAD + RAM + table("memslot", **kv), f"memslot[0].{key}", says="missing required key")


def test_missing_step_do() -> None:
    bad(HEAD + table("step", gpa="0"), "step[0].do", says="missing required key")


@pytest.mark.parametrize("key", ["gpa", "op"])
def test_missing_access_key(key: str) -> None:
    kv = {"do": '"access"', "gpa": "0", "op": '"read"'}
    del kv[key]
    bad(HEAD + table("step", **kv), f"step[0].{key}", says="missing required key")


def test_access_vcpu_defaults_to_zero() -> None:
    s = parse_scenario(HEAD + ACCESS, FILE)
    assert s.steps[0].vcpu == 0


def test_missing_device_kind() -> None:
    bad(HEAD + table("device", sources="1"), "device[0].kind", says="missing required key")


def test_missing_mprotect_prot() -> None:
    bad(HEAD + RAM + table("step", do='"mprotect"', vma='"ram"'), "step[0].prot")


def test_missing_device_reset_device() -> None:
    bad(HEAD + table("step", do='"device_reset"'), "step[0].device")


def test_missing_required_device_key_when_described() -> None:
    bad(HEAD + table("device", kind='"xive"'), "device[0].sources", devices={"xive": XIVE})


# ---- wrong types ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name = 3\n", "name"),
        (HEAD + 'description = ["x"]\n', "description"),
        (HEAD + "arch = 1\n", "arch"),
        (HEAD + 'vma = { name = "ram" }\n', "vma"),
        (HEAD + "vma = [1]\n", "vma[0]"),
        (HEAD + vma(size="true"), "vma[0].size"),
        (HEAD + vma(size="1.5"), "vma[0].size"),
        (HEAD + vma(shared="1"), "vma[0].shared"),
        (HEAD + vma(populate='"yes"'), "vma[0].populate"),
        (HEAD + vma(pgoff="true"), "vma[0].pgoff"),
        (HEAD + vma(name="1"), "vma[0].name"),
        (HEAD + vma(backing="1"), "vma[0].backing"),
        (HEAD + RAM + table("memslot", gpa='"0x1000"', vma='"ram"'), "memslot[0].gpa"),
        (HEAD + RAM + table("memslot", gpa="true", vma='"ram"'), "memslot[0].gpa"),
        (HEAD + RAM + table("memslot", gpa="0", vma="0"), "memslot[0].vma"),
        (HEAD + RAM + table("memslot", gpa="0", vma='"ram"', readonly="0"), "memslot[0].readonly"),
        (HEAD + table("step", do="1"), "step[0].do"),
        (HEAD + table("step", do='"access"', vcpu="true", gpa="0", op='"read"'), "step[0].vcpu"),
        (HEAD + table("step", do='"access"', gpa="0.0", op='"read"'), "step[0].gpa"),
        (
            HEAD + table("step", do='"access"', gpa="0", op='"read"', expect='"mapped"'),
            "step[0].expect",
        ),
        (
            HEAD
            + table("step", do='"access"', gpa="0", op='"read"', expect='{ writable = "yes" }'),
            "step[0].expect.writable",
        ),
        (
            HEAD + table("step", do='"access"', gpa="0", op='"read"', expect="{ frame = true }"),
            "step[0].expect.frame",
        ),
        (
            HEAD + table("step", do='"access"', gpa="0", op='"read"', expect="{ frame = -1 }"),
            "step[0].expect.frame",
        ),
        (
            HEAD
            + table("step", do='"access"', gpa="0", op='"read"', expect='{ verdicts = "oops" }'),
            "step[0].expect.verdicts",
        ),
        (
            HEAD
            + table("step", do='"access"', gpa="0", op='"read"', expect="{ page_size = true }"),
            "step[0].expect.page_size",
        ),
        (HEAD + RAM + table("step", do='"munmap"', vma='"ram"', offset='"4K"'), "step[0].offset"),
        (
            HEAD
            + table("device", kind='"xive"')
            + table("step", do='"device_reset"', device='"xive"', source="[1]"),
            "step[0].source",
        ),
    ],
)
def test_wrong_type(text: str, key: str) -> None:
    bad(text, key)


def test_bool_is_not_an_int() -> None:
    err = bad(HEAD + RAM + table("memslot", gpa="false", vma='"ram"'), "memslot[0].gpa")
    assert "expected a non-negative integer, got False" in str(err)


def test_described_device_key_type() -> None:
    bad(
        HEAD + table("device", kind='"xive"', sources='"16"'),
        "device[0].sources",
        devices={"xive": XIVE},
    )


# ---- bad enum values -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        (HEAD + vma(backing='"anonymous"'), "vma[0].backing", "unknown backing"),
        (HEAD + vma(prot='"wr"'), "vma[0].prot", "unknown prot"),
        (
            HEAD + vma(backing='"pfnmap_linear"', pfn_kind='"io"'),
            "vma[0].pfn_kind",
            "unknown pfn_kind",
        ),
        (HEAD + table("step", do='"access"', gpa="0", op='"store"'), "step[0].op", "unknown op"),
        (
            HEAD + table("step", do='"access"', gpa="0", op='"read"', expect='{ outcome = "ok" }'),
            "step[0].expect.outcome",
            "unknown outcome",
        ),
        (
            HEAD + table("step", do='"access"', gpa="0", op='"read"', expect='{ frame = "guest" }'),
            "step[0].expect.frame",
            "unknown frame",
        ),
        (
            HEAD
            + table(
                "step",
                do='"access"',
                gpa="0",
                op='"read"',
                expect='{ verdicts = ["oops", "wrong_pfn"] }',
            ),
            "step[0].expect.verdicts[1]",
            "did you mean 'wrong_frame'?",
        ),
        (
            HEAD
            + RAM
            + table("step", do='"munmap"', vma='"ram"', at='"before_hva_to_pfn"')
            + ACCESS,
            "step[0].at",
            "unknown race point",
        ),
        (
            HEAD + RAM + table("step", do='"mprotect"', vma='"ram"', prot='"w"'),
            "step[0].prot",
            "unknown prot",
        ),
    ],
)
def test_bad_enum_value(text: str, key: str, says: str) -> None:
    err = bad(text, key, says=says)
    assert "expected one of" in str(err)


def test_verdict_listed_twice() -> None:
    bad(
        HEAD
        + table(
            "step", do='"access"', gpa="0", op='"read"', expect='{ verdicts = ["oops", "oops"] }'
        ),
        "step[0].expect.verdicts[1]",
    )


# ---- sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('"12Q"', "not a size"),
        ('"64 K"', "not a size"),
        ('"1T"', "not a size"),
        ('""', "not a size"),
        ("-4096", "must be positive"),
        ('"-4K"', "not a size"),
        ("0", "must be positive"),
        ('"0K"', "must be positive"),
        ('"6K"', "not a multiple of 4K"),
        ("4097", "not a multiple of 4K"),
    ],
)
def test_bad_size(value: str, says: str) -> None:
    bad(HEAD + vma(size=value), "vma[0].size", says=says)


def test_bad_memslot_and_step_and_expect_sizes() -> None:
    bad(HEAD + RAM + table("memslot", gpa="0", vma='"ram"', size='"1K"'), "memslot[0].size")
    bad(HEAD + RAM + table("step", do='"munmap"', vma='"ram"', size="0"), "step[0].size")
    bad(
        HEAD + table("step", do='"access"', gpa="0", op='"read"', expect='{ page_size = "2Q" }'),
        "step[0].expect.page_size",
    )


# ---- vma consistency -----------------------------------------------------


def test_duplicate_vma_name() -> None:
    bad(HEAD + RAM + RAM, "vma[1].name", says="duplicate vma name, already used by vma[0]")


def test_bad_vma_name() -> None:
    bad(HEAD + vma(name='"my ram"'), "vma[0].name", says="not a valid name")


def test_huge_on_a_backing_without_huge_pages() -> None:
    # shmem has THPs (issue 19): its huge is accepted; a regular file's page
    # cache and a driver's PFNMAP have none
    bad(HEAD + vma(backing='"file"', huge='"2M"'), "vma[0].huge", says="'file'")
    bad(HEAD + vma(backing='"pfnmap_linear"', huge='"2M"'), "vma[0].huge", says="'pfnmap_linear'")


def test_hugetlbfs_without_huge() -> None:
    bad(HEAD + vma(backing='"hugetlbfs"'), "vma[0].huge", says="missing")


def test_huge_not_a_power_of_two() -> None:
    bad(HEAD + vma(backing='"hugetlbfs"', huge='"3M"'), "vma[0].huge", says="power of two")


def test_huge_not_larger_than_a_page() -> None:
    bad(HEAD + vma(huge='"4K"'), "vma[0].huge", says="power of two larger than 4K")


def test_hugetlbfs_size_not_whole_huge_pages() -> None:
    bad(
        HEAD + vma(backing='"hugetlbfs"', huge='"2M"', size='"3M"'),
        "vma[0].size",
        says="2M huge pages",
    )


def test_pfn_kind_on_a_backing_without_pfns() -> None:
    bad(HEAD + vma(pfn_kind='"mmio"'), "vma[0].pfn_kind", says="'anon'")


def test_fault_retry_on_another_backing() -> None:
    bad(
        HEAD + vma(backing='"pfnmap_linear"', fault_retry="1"),
        "vma[0].fault_retry",
        says="'pfnmap_linear'",
    )


def test_fault_retry_negative() -> None:
    bad(
        HEAD + vma(backing='"pfnmap_fault"', fault_retry="-1"),
        "vma[0].fault_retry",
        says="must not be negative",
    )


def test_negative_pgoff() -> None:
    bad(HEAD + vma(pgoff="-1"), "vma[0].pgoff")


def test_device_backing_without_device() -> None:
    bad(HEAD + vma(backing='"device"'), "vma[0].device", says="missing")


def test_device_backing_naming_an_unknown_device_kind() -> None:
    bad(
        HEAD + table("device", kind='"xive"') + vma(backing='"device"', device='"xics"'),
        "vma[0].device",
        devices=["xive"],
        says="unknown device kind",
    )


def test_device_backing_without_a_declared_device() -> None:
    bad(
        HEAD + vma(backing='"device"', device='"xive"'),
        "vma[0].device",
        says="no [[device]] of this kind",
    )


def test_device_key_on_another_backing() -> None:
    bad(
        HEAD + table("device", kind='"xive"') + vma(device='"xive"'), "vma[0].device", says="'anon'"
    )


# ---- devices -------------------------------------------------------------


def test_device_of_unknown_kind() -> None:
    err = bad(
        HEAD + table("device", kind='"xics"'),
        "device[0].kind",
        devices=["xive"],
        says="unknown device kind",
    )
    assert "expected one of xive" in str(err)


def test_device_of_any_kind_when_devices_not_given() -> None:
    assert parse_scenario(HEAD + table("device", kind='"xics"'), FILE).devices[0].kind == "xics"


def test_duplicate_device_kind() -> None:
    bad(HEAD + table("device", kind='"xive"') + table("device", kind='"xive"'), "device[1].kind")


# ---- memslots ------------------------------------------------------------


def test_memslot_over_missing_vma() -> None:
    bad(
        HEAD + RAM + table("memslot", gpa="0", vma='"rom"'),
        "memslot[0].vma",
        says="no vma of this name",
    )


def test_memslot_range_past_the_vma() -> None:
    bad(
        HEAD + RAM + table("memslot", gpa="0", vma='"ram"', offset="0x100000", size='"64M"'),
        "memslot[0].size",
        says="runs past the end of vma 'ram'",
    )


def test_memslot_offset_past_the_vma() -> None:
    bad(
        HEAD + RAM + table("memslot", gpa="0", vma='"ram"', offset="0x4000000"),
        "memslot[0].offset",
        says="outside vma 'ram'",
    )


def test_memslot_offset_not_aligned() -> None:
    bad(
        HEAD + RAM + table("memslot", gpa="0", vma='"ram"', offset="0x800"),
        "memslot[0].offset",
        says="not aligned to 4K",
    )


def test_memslot_gpa_not_aligned() -> None:
    err = bad(
        HEAD + RAM + table("memslot", gpa="0x1800", vma='"ram"'),
        "memslot[0].gpa",
        says="not aligned to 4K",
    )
    assert "got 0x1800" in str(err)


def test_memslot_gpa_negative() -> None:
    bad(HEAD + RAM + table("memslot", gpa="-4096", vma='"ram"'), "memslot[0].gpa")


def test_overlapping_memslots() -> None:
    text = (
        HEAD
        + RAM
        + table("memslot", gpa="0x100000", vma='"ram"', size='"1M"')
        + table("memslot", gpa="0x1000000", vma='"ram"')
        + table("memslot", gpa="0x1ff000", vma='"ram"', size='"4K"')
    )
    bad(text, "memslot[2].gpa", says="overlaps memslot[0] (0x100000-0x1fffff)")


def test_adjacent_memslots_do_not_overlap() -> None:
    text = (
        HEAD
        + RAM
        + table("memslot", gpa="0", vma='"ram"', size='"1M"')
        + table("memslot", gpa="0x100000", vma='"ram"', size='"1M"')
    )
    assert len(parse_scenario(text, FILE).memslots) == 2


# ---- steps ---------------------------------------------------------------


def test_unknown_step_kind() -> None:
    err = bad(HEAD + table("step", do='"unmap"'), "step[0].do", says="did you mean 'munmap'?")
    assert "device_reset" in str(err)


def test_plugin_step_kind_is_known_only_when_given() -> None:
    text = HEAD + table("device", kind='"xive"') + table("step", do='"esb_load"', source="1")
    bad(text, "step[0].do")
    s = parse_scenario(text, FILE, step_kinds={"esb_load": ESB_LOAD})
    assert s.steps[0].params == {"source": 1}


def test_plugin_step_missing_required_key() -> None:
    bad(HEAD + table("step", do='"esb_load"'), "step[0].source", step_kinds={"esb_load": ESB_LOAD})


def test_plugin_step_wrong_param_type() -> None:
    bad(
        HEAD + table("step", do='"esb_load"', source="true"),
        "step[0].source",
        step_kinds={"esb_load": ESB_LOAD},
        says="expected an integer",
    )


def test_plugin_step_unknown_key() -> None:
    bad(
        HEAD + table("step", do='"esb_load"', source="1", ea="0"),
        "step[0].ea",
        step_kinds={"esb_load": ESB_LOAD},
    )


def test_plugin_step_core_key_gets_core_validation() -> None:
    bad(
        HEAD + table("step", do='"esb_load"', source="1", vcpu="-1"),
        "step[0].vcpu",
        step_kinds={"esb_load": ESB_LOAD},
    )


def test_plugin_step_device_must_be_declared() -> None:
    bad(
        HEAD + table("step", do='"esb_load"', source="1", device='"xive"'),
        "step[0].device",
        step_kinds={"esb_load": ESB_LOAD},
    )


def test_inconsistent_step_kinds_are_a_plugin_error() -> None:
    with pytest.raises(PluginError):
        parse_scenario(HEAD, FILE, step_kinds={"access": StepKind("access")})
    with pytest.raises(PluginError):
        parse_scenario(HEAD, FILE, step_kinds={"a": StepKind("b")})
    with pytest.raises(PluginError):
        parse_scenario(HEAD, FILE, step_kinds={"a": StepKind("a", required=("x",))})


def test_negative_vcpu() -> None:
    bad(
        HEAD + table("step", do='"access"', vcpu="-1", gpa="0", op='"read"'),
        "step[0].vcpu",
        says="must not be negative",
    )


def test_negative_gpa() -> None:
    bad(HEAD + table("step", do='"access"', gpa="-1", op='"read"'), "step[0].gpa")


def test_step_over_missing_vma() -> None:
    bad(
        HEAD + RAM + table("step", do='"munmap"', vma='"rom"'),
        "step[0].vma",
        says="no vma of this name",
    )


def test_step_range_past_the_vma() -> None:
    bad(
        HEAD + RAM + table("step", do='"munmap"', vma='"ram"', offset="0x3ff0000", size='"1M"'),
        "step[0].size",
        says="runs past the end",
    )


def test_step_offset_past_the_vma() -> None:
    bad(
        HEAD + RAM + table("step", do='"poison"', vma='"ram"', offset="0x4000000"),
        "step[0].offset",
        says="outside vma",
    )


def test_step_offset_not_aligned() -> None:
    # a range step starts at a page; a host store is one access, aligned to its width
    bad(HEAD + RAM + table("step", do='"poison"', vma='"ram"', offset="8"), "step[0].offset")
    bad(
        HEAD + RAM + table("step", do='"host_write"', vma='"ram"', offset="4"),
        "step[0].offset",
        says="aligned to 8 bytes",
    )


def test_expect_outcome_on_a_host_step() -> None:
    bad(
        HEAD + RAM + table("step", do='"munmap"', vma='"ram"', expect='{ outcome = "mapped" }'),
        "step[0].expect.outcome",
        says="not a guest access",
    )


def test_expect_verdicts_on_a_host_step_is_fine() -> None:
    s = parse_scenario(
        HEAD
        + RAM
        + table("step", do='"munmap"', vma='"ram"', expect='{ verdicts = ["stale_mapping"] }'),
        FILE,
    )
    assert s.steps[0].expect is not None
    assert s.steps[0].expect.verdicts == ("stale_mapping",)


def test_expect_on_a_kind_that_forbids_it() -> None:
    kind = StepKind("nop", expect=())
    bad(HEAD + table("step", do='"nop"', expect="{}"), "step[0].expect", step_kinds={"nop": kind})


@pytest.mark.parametrize(
    ("expect", "key"),
    [
        ('{ outcome = "efault", writable = true }', "step[0].expect.writable"),
        ('{ outcome = "sigbus", page_size = "4K" }', "step[0].expect.page_size"),
        ('{ outcome = "mmio", frame = "host" }', "step[0].expect.frame"),
        ('{ outcome = "mapped", frame = "none" }', "step[0].expect.frame"),
    ],
)
def test_contradictory_expect(expect: str, key: str) -> None:
    bad(HEAD + table("step", do='"access"', gpa="0", op='"read"', expect=expect), key)


def test_at_on_an_access_step() -> None:
    bad(
        HEAD + table("step", do='"access"', gpa="0", op='"read"', at='"after_hva_to_pfn"'),
        "step[0].at",
        says="guest access cannot fire at a race point",
    )


def test_at_without_a_later_access() -> None:
    text = HEAD + RAM + ACCESS + table("step", do='"munmap"', vma='"ram"', at='"before_create_pte"')
    bad(text, "step[1].at", says="no later access step")


def test_device_reset_of_undeclared_device() -> None:
    bad(
        HEAD + table("step", do='"device_reset"', device='"xive"'),
        "step[0].device",
        says="no [[device]] of this kind",
    )


def test_device_reset_core_key_is_not_swallowed() -> None:
    bad(
        HEAD
        + table("device", kind='"xive"')
        + table("step", do='"device_reset"', device='"xive"', vcpu="0"),
        "step[0].vcpu",
    )


def test_device_reset_keys_checked_when_device_described() -> None:
    base = HEAD + table("device", kind='"xive"', sources="4")
    bad(
        base + table("step", do='"device_reset"', device='"xive"', sauce="1"),
        "step[0].sauce",
        devices={"xive": XIVE},
        says="did you mean 'source'?",
    )
    bad(
        base + table("step", do='"device_reset"', device='"xive"', source='"1"'),
        "step[0].source",
        devices={"xive": XIVE},
    )


# ---- arch ----------------------------------------------------------------


def test_unknown_arch_when_arches_given() -> None:
    bad(
        HEAD + 'arch = "ppc_radx"\n',
        "arch",
        arches=["ppc_radix", "x86_ept"],
        says="did you mean 'ppc_radix'?",
    )


def test_long_values_are_cut_short_in_errors() -> None:
    err = bad(HEAD + vma(size="[" + ", ".join(["1234567890"] * 20) + "]"), "vma[0].size")
    assert len(str(err)) < 200


def test_odd_step_key_is_quoted_in_the_key_path() -> None:
    # found by the fuzz test: the raw newline used to break the one-line error
    bad(HEAD + RAM + table("step", do='"munmap"', vma='"ram"', **{'"\\n"': "0"}), 'step[0]."\\n"')


# ---- values the model cannot simulate (issue 22 item 13) -------------------


def access(**kv: str) -> str:
    keys = {"do": '"access"', "gpa": "0x1000", "op": '"write"', **kv}
    return table("step", **keys)


@pytest.mark.parametrize("width", ["-2", "0", "3", "16", "1073741826"])
def test_access_width_is_an_mmio_size(width: str) -> None:
    # kvm_run.mmio.data is 8 bytes: loads and stores of 1, 2, 4 or 8 bytes
    err = bad(HEAD + RAM + SLOT + access(width=width), "step[0].width", says="access size")
    assert err.expected is not None and "1, 2, 4, 8" in err.expected


@pytest.mark.parametrize("width", ["1", "2", "4", "8"])
def test_access_widths_accepted(width: str) -> None:
    sc = parse_scenario(HEAD + RAM + SLOT + access(width=width), FILE)
    assert sc.steps[0].params["width"] == int(width)


@pytest.mark.parametrize(("width", "value"), [("1", "256"), ("2", "-1"), ("8", "-5")])
def test_store_value_fits_its_width(width: str, value: str) -> None:
    bad(HEAD + RAM + SLOT + access(width=width, value=value), "step[0].value", says="fit")


def test_store_value_at_the_top_of_its_width_is_accepted() -> None:
    sc = parse_scenario(HEAD + RAM + SLOT + access(width="2", value="0xffff"), FILE)
    assert sc.steps[0].params["value"] == 0xFFFF


def test_negative_ea_is_refused() -> None:
    bad(HEAD + RAM + SLOT + access(ea="-4096"), "step[0].ea", says="negative")


def test_vma_of_2_pow_64_bytes_is_over_the_address_space_limit() -> None:
    err = bad(HEAD + vma(size=str(2**64)), "vma[0].size", says="64G of vmas")
    assert "limit" in err.message


def test_vmas_over_the_limit_together_name_the_one_that_crosses_it() -> None:
    text = HEAD + vma(name='"a"', size='"40G"', backing='"pfnmap_linear"')
    text += vma(name='"b"', size='"40G"', backing='"pfnmap_linear"')
    bad(text, "vma[1].size", says="80G of vmas")


def test_a_16g_pfnmap_linear_bar_is_accepted() -> None:
    # MMIO frames cost no simulated RAM and its PTEs are built when touched
    sc = parse_scenario(HEAD + vma(size='"16G"', backing='"pfnmap_linear"'), FILE)
    assert sc.vmas[0].size == 16 << 30


@pytest.mark.parametrize(
    "kv",
    [
        {"size": '"16G"'},
        {"size": '"16G"', "backing": '"pfnmap_linear"', "pfn_kind": '"ram"'},
        {"size": '"16G"', "backing": '"hugetlbfs"', "huge": '"1G"'},
    ],
)
def test_ram_backed_vmas_over_the_simulated_ram_limit(kv: dict[str, str]) -> None:
    bad(HEAD + vma(**kv), "vma[0].size", says="of RAM-backed vmas")


def test_populating_more_than_the_limit_is_refused() -> None:
    bad(HEAD + vma(size='"2G"', populate="true"), "vma[0].populate", says="populated")
    # hugetlbfs populates whole huge pages: not limited
    sc = parse_scenario(
        HEAD + vma(size='"2G"', backing='"hugetlbfs"', huge='"1G"', populate="true"), FILE
    )
    assert sc.vmas[0].populate


def test_memslot_past_the_guest_physical_address_space() -> None:
    slot = table("memslot", gpa=hex((1 << 52) - 0x1000), vma='"ram"', size='"8K"')
    bad(HEAD + RAM + slot, "memslot[0].gpa", says="52 bits")


def test_limits_are_checked_by_kvmsim_run_before_any_work(tmp_path: Path) -> None:
    from kvmsim.cli import main

    f = tmp_path / "big.toml"
    f.write_text(HEAD + 'arch = "ppc_radix"\n' + vma(size='"64G"', populate="true") + SLOT)
    assert main(["run", str(f), "--strategy", "generic_v4_16"]) == 2
