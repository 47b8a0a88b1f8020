"""The scenario JSON Schema and docs/scenarios.md against the loader
(issue 22, item 3)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kvmsim.cli import main
from kvmsim.registry import discover, scenario_schema
from kvmsim.scenario import CORE_STEP_KINDS, EXPECT_KEYS, OUTCOMES, builtin_scenarios, loader
from kvmsim.scenario.model import KNOWN_STEP_OUTCOMES
from kvmsim.scenario.schema import (
    REF_END,
    REF_START,
    builtin_schema,
    json_schema,
    markdown_reference,
)

from .jsonschema_subset import validate

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "scenarios.md"
EXAMPLES = sorted((ROOT / "examples").glob("*/*/scenarios/*.toml"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json_schema()


def _loader_keys() -> dict[str, set[str]]:
    """Every key the loader accepts, by table, read from the loader's own
    data (not a copy), including plugins' step kinds and device kinds."""
    steps, devices = scenario_schema()
    keys = {
        "top": set(loader._TOP_KEYS),
        "vma": set(loader._VMA_KEYS),
        "memslot": set(loader._MEMSLOT_KEYS),
        "known": set(loader._KNOWN_KEYS),
        "expect": set(EXPECT_KEYS),
        "device": {"kind"},
    }
    # the core kinds as the loader has them (with plugins' access keys)
    for name, kind in loader._step_kinds(steps).items():
        keys[f"step_{name}"] = {"do", *kind.fields} | (set() if kind.faults else {"at"})
        if kind.expect_keys():
            keys[f"step_{name}"].add("expect")
    for name, dk in devices.items():
        if not isinstance(dk, str):
            keys[f"device:{name}"] = {"kind", *dk.fields}
            keys[f"device_reset:{name}"] = set(dk.reset_fields)
    return keys


@pytest.mark.parametrize("path", builtin_scenarios() + EXAMPLES, ids=lambda p: p.stem)
def test_every_builtin_scenario_validates(path: Path, schema: dict[str, Any]) -> None:
    doc = tomllib.loads(path.read_text())
    if path in EXAMPLES:  # the example plugin's arch may not be installed
        if doc.get("arch") not in discover()["arch"] and _uses_plugin_keys(doc):
            pytest.skip("uses the example plugin's own keys: validated with it installed")
        doc.pop("arch", None)
    assert validate(doc, schema) == []


def _uses_plugin_keys(doc: dict[str, Any]) -> bool:
    """The scenario has a key or step kind only its arch plugin adds."""
    core = loader.CORE_STEP_KINDS
    for step in doc.get("step", []):
        kind = core.get(step.get("do"))
        if kind is None or set(step) - {"do", "at", "actor", "expect", *kind.fields}:
            return True
        if step.get("expect", {}).get("outcome", "mapped") not in OUTCOMES:
            return True
    return any(
        set(k.get("outcomes", {}).values()) - set(KNOWN_STEP_OUTCOMES) for k in doc.get("known", [])
    )


BAD: list[dict[str, Any]] = [
    {"name": "x", "vma": [{"name": "r", "size": "1M", "backing": "anno"}]},
    {"name": "x", "vma": [{"name": "r", "size": "1.5M", "backing": "anon"}]},
    {"name": "x", "vma": [{"name": "r", "size": "1M", "backing": "anon", "sise": 1}]},
    {"name": "x", "vma": [{"name": "r", "size": "2M", "backing": "hugetlbfs"}]},
    {
        "name": "x",
        "step": [{"do": "access", "gpa": 0, "op": "read", "at": "before_create_pte"}],
    },
    {"name": "x", "step": [{"do": "acess", "gpa": 0, "op": "read"}]},
    {"name": "x", "step": [{"do": "munmap", "vma": "r", "expect": {"outcome": "mapped"}}]},
    {
        "name": "x",
        "step": [{"do": "access", "gpa": 0, "op": "read", "expect": {"frame": "hots"}}],
    },
    {"name": "x", "known": [{"strategy": "s", "verdicts": ["oops"]}]},
    {
        "name": "x",
        "known": [{"strategy": "s", "verdicts": [], "reason": "r", "outcomes": {"a": "oops"}}],
    },
    {"name": "x", "device": [{"kind": "xive", "sorces": 4}]},
    {"name": "x", "unknown": 1},
    {"description": "no name"},
]


@pytest.mark.parametrize("bad", BAD)
def test_the_schema_rejects_what_the_loader_rejects(
    bad: dict[str, Any], schema: dict[str, Any]
) -> None:
    assert validate(bad, schema)


def test_every_loader_key_is_in_the_schema_and_described(schema: dict[str, Any]) -> None:
    defs = schema["$defs"]
    for table, keys in _loader_keys().items():
        if table.startswith("device:"):
            cond = next(
                c
                for c in defs["device"]["allOf"]
                if c["if"]["properties"]["kind"]["const"] == table[7:]
            )
            props = {"kind", *cond["then"]["properties"]}
        elif table.startswith("device_reset:"):
            cond = next(
                c
                for c in defs["step_device_reset"]["allOf"]
                if c["if"]["properties"]["device"]["const"] == table[13:]
            )
            props = set(cond["then"]["properties"])
        else:
            props = set((schema if table == "top" else defs[table])["properties"])
        assert keys <= props, (table, keys - props)
    # the core tables' keys each have a sentence (plugins document theirs)
    core = {"top", "vma", "memslot", "known", "expect"} | {f"step_{n}" for n in CORE_STEP_KINDS}
    for table in core:
        s = schema if table == "top" else defs[table]
        for key, prop in s["properties"].items():
            assert prop.get("description"), (table, key)


def _builtin_step_kinds() -> set[str]:
    # the docs describe kvmsim's own plugins, whatever else is installed
    return set(builtin_schema()["$defs"]["step"]["properties"]["do"]["enum"])


def test_every_loader_key_is_in_the_docs() -> None:
    text = DOC.read_text()
    builtin = _builtin_step_kinds()
    # keys another distribution's plugin adds to the access step are its to document
    own_access = set(builtin_schema()["$defs"]["step_access"]["properties"])
    for table, keys in _loader_keys().items():
        if table.startswith("step_") and table[5:] not in builtin:
            continue
        if table == "step_access":
            keys = keys & own_access
        for key in keys:
            assert f"`{key}`" in text, (table, key)
    for name in builtin:
        assert f'#### `do = "{name}"`' in text, name


def test_the_generated_reference_is_up_to_date() -> None:
    # built from kvmsim's own plugins, whatever else is installed
    text = DOC.read_text()
    current = text[text.index(REF_START) : text.index(REF_END) + len(REF_END)]
    assert current == markdown_reference(), "run: python -m kvmsim.scenario.schema"


_PREAMBLE = """
name = "doc-example"
{arch}
[[vma]]
name = "ram"
size = "1M"
backing = "anon"

[[vma]]
name = "shm"
size = "1M"
backing = "shmem"
shared = true

[[memslot]]
gpa = 0x0
vma = "ram"
{device}
"""
_ARCH_OF = {"hcall": "ppc_hpt", "device_reset": "ppc_radix"}
_X86 = {"swap_out", "async_pf", "apf_complete", "dirty_log"}


def _examples() -> list[str]:
    text = DOC.read_text()
    return re.findall(r"```toml\n(\[\[step\]\].*?)```", text, re.S)


@pytest.mark.parametrize("snippet", _examples())
def test_doc_step_examples_load_and_validate(snippet: str, schema: dict[str, Any]) -> None:
    kinds = re.findall(r'^do = "(\w+)"', snippet, re.M)
    arch = next((_ARCH_OF[k] for k in kinds if k in _ARCH_OF), None)
    arch = arch or ("x86_ept" if set(kinds) & _X86 else None)
    device = '\n[[device]]\nkind = "xive"\n' if "device_reset" in kinds else ""
    text = _PREAMBLE.format(arch=f'arch = "{arch}"' if arch else "", device=device) + snippet
    steps, devices = scenario_schema()
    loader.parse_scenario(text, "docs/scenarios.md", devices=devices, step_kinds=steps)
    assert validate(tomllib.loads(text), schema) == []


def test_every_step_kind_has_a_doc_example() -> None:
    shown = {k for s in _examples() for k in re.findall(r'^do = "(\w+)"', s, re.M)}
    assert set(CORE_STEP_KINDS) | _builtin_step_kinds() <= shown


def test_kvmsim_schema_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert printed == json.loads(json.dumps(json_schema()))


def test_the_schema_is_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    # jsonschema is not a test dependency: this runs where it is installed
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    # and the small validator above agrees with it
    v = jsonschema.Draft202012Validator(schema)
    docs = [tomllib.loads(p.read_text()) for p in builtin_scenarios()] + BAD
    for doc in docs:
        assert bool(list(v.iter_errors(doc))) == bool(validate(doc, schema)), doc
