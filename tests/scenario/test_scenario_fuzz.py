"""Whatever the input, the loader returns a Scenario or raises ScenarioError."""

from __future__ import annotations

import copy
import datetime as dt
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvmsim.errors import ScenarioError
from kvmsim.scenario import (
    BACKINGS,
    CORE_STEP_KINDS,
    OPS,
    OUTCOMES,
    PFN_KINDS,
    PROTS,
    RACE_POINTS,
    VERDICTS,
    DeviceKind,
    Scenario,
    StepKind,
    parse_scenario,
)

EXAMPLE = tomllib.loads((Path(__file__).parent / "data" / "full_example.toml").read_text())
SOURCE = "fuzz.toml"

# ---- a tiny TOML writer --------------------------------------------------


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_string(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(doc: dict[str, Any], headers: bool) -> str:
    """Serialise *doc*; with *headers*, arrays of tables as ``[[key]]`` sections."""
    sections = {}
    lines = []
    for k, v in doc.items():
        if headers and isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            sections[k] = v
        else:
            lines.append(f"{_string(k)} = {_value(v)}")
    for k, tables in sections.items():
        for t in tables:
            lines.append(f"[[{_string(k)}]]")
            lines.extend(f"{_string(kk)} = {_value(vv)}" for kk, vv in t.items())
    return "\n".join(lines) + "\n"


# ---- strategies ----------------------------------------------------------

KEYS = sorted(
    {
        "name",
        "description",
        "arch",
        "vma",
        "memslot",
        "device",
        "step",
        "kind",
        "sources",
        "source",
        "size",
        "backing",
        "prot",
        "shared",
        "huge",
        "populate",
        "pgoff",
        "pfn_kind",
        "fault_retry",
        "gpa",
        "offset",
        "readonly",
        "do",
        "vcpu",
        "op",
        "at",
        "expect",
        "outcome",
        "writable",
        "frame",
        "page_size",
        "verdicts",
        "ea",
        "count",
    }
)
WORDS = sorted(
    {
        *BACKINGS,
        *PROTS,
        *PFN_KINDS,
        *OPS,
        *OUTCOMES,
        *VERDICTS,
        *RACE_POINTS,
        *CORE_STEP_KINDS,
        "ram",
        "esb",
        "bar",
        "xive",
        "host",
        "none",
        "esb_load",
        "64K",
        "2M",
        "1G",
        "4K",
        "12Q",
        "-4K",
        "0",
        "3M",
        "",
        "0x1000",
    }
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 4096, 0x1000, 0x10000, 0x200000, 64 << 20, 4 << 30, 2**63 - 1]),
    st.floats(),
    st.booleans(),
    st.sampled_from(WORDS),
    st.text(max_size=8),
    st.datetimes(min_value=dt.datetime(1000, 1, 1)),
    st.dates(min_value=dt.date(1000, 1, 1)),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=6,
)


def tables(names: list[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.dictionaries(st.one_of(st.sampled_from(names), keys), values, max_size=6), max_size=3
    )


structured = st.fixed_dictionaries(
    {"name": st.sampled_from(["t", "a-b.c"])},
    optional={
        "description": st.one_of(st.text(max_size=8), values),
        "arch": st.one_of(st.sampled_from(["ppc_radix", "x86_ept"]), values),
        "vma": tables(["name", "size", "backing", "prot", "huge", "device", "pfn_kind"]),
        "memslot": tables(["gpa", "vma", "offset", "size", "readonly"]),
        "device": tables(["kind", "sources"]),
        "step": tables(["do", "vcpu", "gpa", "op", "vma", "offset", "size", "at", "expect"]),
    },
)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) position inside *node*."""
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        found.append((node, k))
        if isinstance(v, (dict, list)):
            found.extend(_slots(v))
    return found


@st.composite
def mutated_example(draw: st.DrawFn) -> dict[str, Any]:
    """The valid full example with a few random deletions, replacements, additions."""
    doc = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(doc)
        container, k = slots[draw(st.integers(0, len(slots) - 1))]
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete":
            del container[k]
        elif action == "replace":
            container[k] = draw(values)
        elif isinstance(container, dict):
            container[draw(keys)] = draw(values)
        else:
            container.append(draw(values))
    return doc


structured_text = st.tuples(structured, st.booleans()).map(lambda d: (to_toml(*d), True))
mutated_text = st.tuples(mutated_example(), st.booleans()).map(lambda d: (to_toml(*d), True))
garbage = st.one_of(
    st.text(max_size=200).map(lambda t: (t, False)),
    st.binary(max_size=200).map(lambda b: (b.decode("utf-8", "surrogateescape"), False)),
    st.lists(
        st.sampled_from(
            [
                "[[vma]]",
                "[[step]]",
                "name = ",
                '"x"',
                "=",
                "{",
                "}",
                "[",
                "]",
                "\n",
                "0x1000",
                "'",
                '"""',
                ",",
                "do",
                ".",
            ]
        ),
        max_size=30,
    ).map(lambda parts: ("".join(parts), False)),
)
# Well-formed documents get two thirds of the examples: they reach the validator.
documents = st.one_of(structured_text, mutated_text, garbage)

ESB_LOAD = StepKind(
    "esb_load", {"device": str, "source": int, "vcpu": int}, required=("source",), faults=True
)
XIVE = DeviceKind(
    "xive", {"sources": int, "mode": str, "priorities": list}, reset_fields={"source": int}
)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(documents, st.sampled_from([None, ["xive"], {"xive": XIVE}]), st.booleans())
def test_loader_never_raises_anything_but_scenario_error(
    doc: tuple[str, bool], devices: Any, plugin_steps: bool
) -> None:
    text, well_formed = doc
    if well_formed:
        tomllib.loads(text)  # the writer itself must produce valid TOML
    step_kinds = {"esb_load": ESB_LOAD} if plugin_steps else None
    try:
        result = parse_scenario(text, SOURCE, devices=devices, step_kinds=step_kinds)
    except ScenarioError as err:
        shown = str(err)
        assert err.file == SOURCE and shown.startswith(SOURCE + ": ")
        assert "\n" not in shown
        # Shows in --hypothesis-show-statistics how deep the inputs get.
        event(f"error at {(err.key or 'toml').split('.')[0].split('[')[0]}")
    else:
        event("valid scenario")
        assert isinstance(result, Scenario)
        hash(result)


def test_the_mutation_base_is_valid() -> None:
    # If the base stopped loading, the mutation strategy would only test errors.
    text = to_toml(EXAMPLE, headers=False)
    assert parse_scenario(text, SOURCE, devices=["xive"]).name == EXAMPLE["name"]
