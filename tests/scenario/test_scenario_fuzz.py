"""Whatever the input, the loader returns a Scenario or raises ScenarioError;
whatever a mutated builtin scenario holds, ``kvmsim run`` ends in a verdict or
one clean error."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import io
import math
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvmsim.cli import main
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
    library,
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


# ---- builtin scenarios, mutated, through `kvmsim run` (issue 22 item 16) ----
#
# The same code path as the command line: kvmsim.cli.main in-process, on a
# file.  Every run must end in a verdict (exit 0 or 1) or one clean error
# (exit 2); exit 3 (an internal error) or an escaping exception is a bug.
# benchmarks/fuzz_scenarios.py runs these strategies 10,000 times.

LIBRARY = sorted((Path(library.__file__).parent).glob("*.toml"))
LIBRARY_TEXTS = [(p.stem, p.read_text(encoding="utf-8")) for p in LIBRARY]
BOUNDARY_INTS = [
    2**63 - 1,
    -(2**63),
    2**62,
    2**52,
    2**40,
    2**32 + 2,
    1073741826,
    10**18,
    4097,
    3,
    1,
    0,
    -1,
    -2,
    -4096,
]
wrong_values = st.one_of(
    st.sampled_from(BOUNDARY_INTS),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(WORDS),
    st.text(max_size=10),
    st.booleans(),
    st.floats(),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.sampled_from(KEYS), st.integers(-5, 5), max_size=2),
)


def numbers_like(old: int) -> st.SearchStrategy[int]:
    """Another integer for a slot holding ``old``: boundary values, small
    ones, and page-aligned ones (so that addresses and sizes get past the
    alignment checks and reach the runner)."""
    return st.one_of(
        st.sampled_from(BOUNDARY_INTS),
        st.integers(-4, 64),
        st.integers(-4, 1 << 24).map(lambda n: n * 4096),
        st.integers(0, 64).map(lambda n: old * n),
    )


RUN_STRATEGIES = ["generic_v4_16", "ppc_original", "paolo_refactor", "follow_pfn_2024"]
RUN_ARCHES = [None, None, "ppc_radix", "ppc_hpt", "x86_ept", "ppc_radix_4k"]


def _nest(value: Any, depth: int, arrays: bool) -> Any:
    for _ in range(depth):
        value = [value] if arrays else {"n": value}
    return value


@st.composite
def mutated_library(draw: st.DrawFn) -> tuple[str, bytes]:
    """A builtin scenario with 1-4 mutations of its document (a value of the
    wrong type, a huge or negative number, an unknown key, a deletion, a
    value nested deep), then maybe truncated, with binary junk inserted, or
    behind a line of arrays nested thousands deep."""
    name, text = draw(st.sampled_from(LIBRARY_TEXTS))
    doc = tomllib.loads(text)
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(doc)
        if not slots:
            break
        numbers = [(c, k) for c, k in slots if type(c[k]) is int]
        action = draw(st.sampled_from(["number", "number", "replace", "delete", "add", "nest"]))
        if action == "number" and numbers:
            # the same type, another value: what reaches the runner
            container, k = numbers[draw(st.integers(0, len(numbers) - 1))]
            container[k] = draw(numbers_like(container[k]))
            continue
        container, k = slots[draw(st.integers(0, len(slots) - 1))]
        if action in ("replace", "number"):
            container[k] = draw(wrong_values)
        elif action == "delete":
            del container[k]
        elif action == "add":
            if isinstance(container, dict):
                container[draw(keys)] = draw(wrong_values)
            else:
                container.append(draw(wrong_values))
        else:
            depth = draw(st.sampled_from([2, 10, 60, 120]))
            container[k] = _nest(container[k], depth, draw(st.booleans()))
    out = to_toml(doc, headers=draw(st.booleans())).encode("utf-8")
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "junk", "deep"]))
    if damage == "deep":  # deeper than the writer recurses: arrays as text
        depth = draw(st.sampled_from([500, 5000]))
        out = b"deep = " + b"[" * depth + b"]" * depth + b"\n" + out
    elif damage == "truncate":
        out = out[: draw(st.integers(0, len(out)))]
    elif damage == "junk":
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(st.binary(min_size=1, max_size=40)) + out[at:]
    return name, out


fuzz_runs = st.tuples(
    mutated_library(), st.sampled_from(RUN_STRATEGIES), st.sampled_from(RUN_ARCHES)
)


def run_fuzzed(case: tuple[tuple[str, bytes], str, str | None], path: Path) -> tuple[int, str]:
    """Run one fuzzed case as ``kvmsim run FILE --strategy S [--arch A]``
    does, in-process; returns the exit status (99: an exception escaped
    main) and what it wrote to stderr."""
    (_, data), strategy, arch = case
    path.write_bytes(data)
    argv = ["run", str(path), "--strategy", strategy]
    if arch is not None:
        argv += ["--arch", arch]
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:  # what escaped is the finding
        return 99, f"{type(exc).__name__}: {exc}"
    return rc, err.getvalue()


RUN_BOUND_S = 30.0  # a hang guard, not a performance target (see the benchmark)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(fuzz_runs)
def test_kvmsim_run_on_mutated_builtin_scenarios(
    tmp_path_factory: pytest.TempPathFactory, case: Any
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "fuzzed.toml"
    t0 = time.perf_counter()
    rc, err = run_fuzzed(case, path)
    took = time.perf_counter() - t0
    assert rc in (0, 1, 2), f"exit {rc} on a mutation of {case[0][0]}: {err}"
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith("kvmsim: error: "), err
    assert took < RUN_BOUND_S, f"{took:.1f} s on a mutation of {case[0][0]}"
