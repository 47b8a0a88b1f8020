"""The scenario format as a JSON Schema (draft 2020-12), and its key reference.

``kvmsim schema`` prints :func:`json_schema`: editors with TOML schema
support (Taplo, Even Better TOML) complete and check scenario files with it.
The schema is built from what the loader itself accepts (its key lists, the
enumerations of :mod:`kvmsim.scenario.model`, :data:`CORE_STEP_KINDS`) plus
what plugins contribute (their step kinds and device kinds, through
:func:`kvmsim.registry.scenario_schema`), so it cannot drift from the loader;
only the sentences describing each key are written here, in :data:`KEY_DOCS`
(a test fails when the loader accepts a key this module does not describe).

The loader checks more than a schema can say (cross-references such as a
memslot's ``vma``, ranges inside a vma, a race point with no later access):
a file the schema accepts may still get a loader error, never the reverse
for a builtin scenario (tests/scenario/test_schema.py).

``python -m kvmsim.scenario.schema`` rewrites the generated key reference
in docs/scenarios.md (between the ``scenario-keys`` markers).
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from kvmsim.dirtylog import DIRTY_KEYS
from kvmsim.scenario import loader
from kvmsim.scenario.model import (
    ACCESS_EXPECT_KEYS,
    ADVICES,
    BACKINGS,
    CORE_STEP_KEYS,
    DIRTY_MODES,
    EXPECT_KEYS,
    FRAME_WORDS,
    KNOWN_STEP_OUTCOMES,
    OPS,
    OUTCOMES,
    PFN_KINDS,
    PROTS,
    RACE_POINTS,
    UFFD_MODES,
    VERDICTS,
    YOUNG_MODES,
    DeviceKind,
    FieldType,
    StepKind,
    VmaSpec,
)
from kvmsim.scenario.sizes import PAGE_SIZE, format_size

#: The distribution whose plugins the generated docs describe.
_OWN_DIST: Final = "kvmsim"

SCHEMA_ID: Final = "https://kvmsim.invalid/scenario.schema.json"

#: Every key a scenario table may hold: ``(default, meaning)``; a default of
#: ``None`` means "required" or "none".  Keyed by table: ``top``, ``vma``,
#: ``memslot``, ``device``, ``step`` (keys common to step kinds), ``access``
#: (access-only keys), ``expect``, ``known``.
KEY_DOCS: Final[Mapping[str, Mapping[str, tuple[str | None, str]]]] = {
    "top": {
        "name": (None, "the scenario's name (letters, digits, '_', '-', '.')"),
        "description": ('""', "what the scenario shows and why, in prose"),
        "arch": (
            "every arch",
            "the one arch plugin the scenario runs on; without it, it runs on every arch",
        ),
        "concurrent": (
            "false",
            "run the steps as actors that kvmsim explore interleaves (see docs/explore.md)",
        ),
        "vma": ("[]", "host mappings of the VMM process ([[vma]] tables)"),
        "memslot": ("[]", "KVM memslots: guest physical ranges backed by vma ranges"),
        "device": ("[]", "emulated devices ([[device]] tables, one per kind)"),
        "dirty": (
            "the arch version's default",
            "how the VM tracks dirty pages for dirty_log steps ([dirty] table)",
        ),
        "uffd": (
            "[]",
            "userfaultfd registrations of vma ranges ([[uffd]] tables), made before the guest runs",
        ),
        "step": ("[]", "what happens, in order ([[step]] tables)"),
        "schedule": (
            "[]",
            "concurrent only: the switches kvmsim run follows ([[schedule]] tables)",
        ),
        "known": ("[]", "recorded historical defects of strategies ([[known]] tables)"),
    },
    "vma": {
        "name": (None, "the vma's name, which memslots and steps refer to"),
        "size": (None, "length of the mapping (a size)"),
        "backing": (None, "what backs the mapping (see Backings)"),
        "prot": (None, "protection: r, rw, rx or rwx"),
        "shared": (None, "MAP_SHARED instead of MAP_PRIVATE"),
        "huge": (
            "none",
            "huge page size: required for hugetlbfs; on anon or shmem, the THP size (2M): "
            "MADV_HUGEPAGE (shmem: under the advise huge policy, shmem_enabled or huge=)",
        ),
        "populate": (None, "MAP_POPULATE: fault every page in at mmap time"),
        "device": (None, "backing 'device': the [[device]] kind whose fault handler fills it"),
        "pgoff": (None, "the mmap offset in pages (vm_pgoff)"),
        "pfn_kind": (
            "mmio for pfnmap/mixedmap backings",
            "pfnmap_linear/pfnmap_fault/mixedmap: what the frames are "
            "(mmio, ram, ram_unrefcounted)",
        ),
        "fault_retry": (
            None,
            "pfnmap_fault: the fault handler returns VM_FAULT_RETRY this many times first",
        ),
    },
    "memslot": {
        "gpa": (None, "guest physical base address (page aligned)"),
        "vma": (None, "the vma backing the slot"),
        "offset": ("0", "byte offset into the vma (page aligned)"),
        "size": ("the rest of the vma", "slot length (a size)"),
        "readonly": ("false", "KVM_MEM_READONLY"),
    },
    "device": {
        "kind": (None, "the device plugin (its entry-point name); other keys are the device's"),
    },
    "dirty": {
        "mode": (
            "the arch version's default (wp on x86, dirty_bit on POWER)",
            "the mechanism: wp (write protection), pml (Intel PML), dirty_bit "
            "(hardware change bits harvested at get), ring (the dirty ring, v5.11+)",
        ),
        "manual_protect": (
            "false",
            "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT: get only reads the bitmap, clear re-arms (v5.0+)",
        ),
        "initially_set": (
            "false",
            "KVM_DIRTY_LOG_INITIALLY_SET: the bitmap starts all set (needs manual_protect)",
        ),
        "ring_size": ("4096", "mode ring: entries per vcpu ring (a power of two)"),
    },
    "uffd": {
        "vma": (None, "the vma whose range is registered (anon, shmem or hugetlbfs backing)"),
        "offset": ("0", "byte offset into the vma (page aligned; huge page aligned on hugetlbfs)"),
        "size": ("the rest of the vma", "length of the registered range (a size)"),
        "mode": (
            '"missing"',
            "missing (UFFDIO_REGISTER_MODE_MISSING: faults on absent pages) or minor "
            "(MODE_MINOR: faults on pages only in the page cache; shmem v5.14+, hugetlbfs v5.13+)",
        ),
        "sigbus": (
            "false",
            "UFFD_FEATURE_SIGBUS (UFFDIO_API): a fault that would wait gets SIGBUS instead "
            "(gup -EFAULT; QEMU's own access a SIGBUS); one setting for the one userfaultfd, "
            "every [[uffd]] must agree",
        ),
    },
    "step": {
        "do": (None, "the step kind (see Step kinds)"),
        "vcpu": ("0", "the vcpu that acts"),
        "gpa": (None, "guest physical address of the access (any alignment)"),
        "op": (None, "read, write or exec"),
        "vma": (None, "the vma a host event acts on"),
        "offset": ("0", "byte offset into the vma (page aligned)"),
        "size": ("the rest of the vma", "length of the range (a size)"),
        "prot": (None, "mprotect: the new protection"),
        "advice": (
            None,
            "madvise: dontneed (MADV_DONTNEED), free (MADV_FREE) or remove (MADV_REMOVE)",
        ),
        "device": (None, "device_reset: the [[device]] kind the event is for"),
        "at": (
            "now",
            "fire this host event later, inside the next access's fault (see Race points)",
        ),
        "actor": (
            "qemu",
            "concurrent only: the host actor that runs this step (not vcpu<N>)",
        ),
        "expect": ("nothing checked", "what a correct kernel does (see expect)"),
        "value": (
            "the host marker",
            "host_write: the value QEMU stores, width bytes (a load reads it back); uffd_copy, "
            "pwrite: the first 8 bytes of each page copied or written (default 0)",
        ),
        "slot": (None, "dirty_log: the memslot (its index in file order); none for reap"),
        "action": (None, "dirty_log: enable, get, clear, disable or reap"),
        "expect_dirty": (
            None,
            "dirty_log get/reap: the gpas a correct kernel reports (else the step fails)",
        ),
        "pml": ("false", "dirty_log enable: the host has Intel PML (mode = 'pml')"),
        "first": ("0", "dirty_log clear: first page of the range (a multiple of 64)"),
        "num": (
            "to the slot's end",
            "dirty_log clear: pages in the range (a multiple of 64, or up to the slot's end)",
        ),
        "young": (
            '"clear"',
            "age: clear (clear_young: clear the accessed bits, say if any was set) "
            "or test (test_young: only say)",
        ),
        "width": ("8", "host_write, host_read: access size in bytes"),
    },
    "access": {
        "ea": ("gpa", "the guest effective address, for MMUs that translate it (HPT)"),
        "width": ("8", "access size in bytes"),
        "value": ("0", "what a store writes"),
    },
    "expect": {
        "outcome": (None, "what the access ends in (see Outcomes)"),
        "writable": (None, "the stage-2 entry is writable"),
        "frame": (
            None,
            "'host' (the frame the host maps at that hva), 'none', or an exact pfn",
        ),
        "page_size": (None, "the stage-2 mapping size (a size)"),
        "verdicts": (
            None,
            "exactly the checker verdicts that fire at this step ([] = none may fire)",
        ),
        "value": (
            None,
            "a load: the value the guest (or a host_read, QEMU) reads "
            "(page contents, a device's reply)",
        ),
        "young": (
            None,
            "an age step: whether any stage-2 entry in the range was young (before clearing)",
        ),
        "uffd_faults": (
            None,
            "userfaultfd fault messages the handler has read by the end of this step, "
            "in the whole run (the kernel selftests' uffd_faults counter)",
        ),
    },
    "schedule": {
        "actor": (None, "the actor that reaches the point (none with at = 'start')"),
        "at": (None, "a yield point, or start, step_end, blocked, guest_retry"),
        "nth": ("1", "the actor's nth arrival at the point"),
        "run": (None, "the actor that runs next"),
    },
    "known": {
        "strategy": (None, "the strategy's entry-point name"),
        "arch": ("every arch", "only on this arch"),
        "verdicts": (None, "exactly the checker verdicts the run produces ([] allowed)"),
        "outcomes": ("{}", "step index -> what that step ended in"),
        "failures": ("{}", "step index -> the expect keys that fail there"),
        "reason": (
            None,
            "the kernel behaviour the defect follows from: a kernel function and "
            "version or commit, or a docs/kernel-notes.md section",
        ),
    },
}

#: Core step keys that are strings of a fixed set (their loader checks them).
_CORE_ENUMS: Final[Mapping[str, tuple[str, ...]]] = {"young": YOUNG_MODES, "advice": ADVICES}

#: A key a plugin added to the core access step (``step_kinds``).
_PLUGIN_ACCESS_KEY: Final = "a key an installed plugin adds to the access step"

#: ``offset`` of a step kind with ``byte_offset`` (host_write, host_read).
_BYTE_OFFSET_DOC: Final = (
    "byte offset into the vma of the load or store, aligned to width "
    "(not to a page: a device page's register)"
)

_SIZE_PATTERN: Final = "^[0-9]+[KMGkmg]?$"
_NAME_PATTERN: Final = "^" + loader._NAME_RE.pattern + "$"


def _vma_defaults() -> dict[str, object]:
    return {
        a.name: a.default
        for a in attrs.fields(VmaSpec)
        if a.default is not attrs.NOTHING and a.default is not None
    }


def _type(types: FieldType) -> dict[str, Any]:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    names[dict] = "object"
    tup = types if isinstance(types, tuple) else (types,)
    js = [names[t] for t in tup if t in names]
    return {"type": js[0] if len(js) == 1 else js}


def _doc(table: str, key: str) -> dict[str, Any]:
    entry = KEY_DOCS.get(table, {}).get(key)
    return {"description": entry[1]} if entry else {}


def _core_step_key(key: str) -> dict[str, Any]:
    """The schema of a key the loader validates itself (CORE_STEP_KEYS)."""
    schemas: dict[str, dict[str, Any]] = {
        "vcpu": {"type": "integer", "minimum": 0},
        "gpa": {"type": "integer", "minimum": 0},
        "op": {"enum": list(OPS)},
        "vma": {"type": "string"},
        "offset": {"type": "integer", "minimum": 0, "multipleOf": PAGE_SIZE},
        "size": {"$ref": "#/$defs/size"},
        "prot": {"enum": list(PROTS)},
    }
    return schemas[key]


def _step_schema(kind: StepKind, device_kinds: Mapping[str, DeviceKind]) -> dict[str, Any]:
    table = "access" if kind.name == "access" else "step"
    props: dict[str, Any] = {"do": {"const": kind.name, **_doc("step", "do")}}
    for key, types in kind.fields.items():
        base = _core_step_key(key) if key in CORE_STEP_KEYS else _type(types)
        doc = _doc(table, key) or _doc("step", key)
        if kind.name in loader.CORE_STEP_KINDS and key in _CORE_ENUMS:
            base = {"enum": list(_CORE_ENUMS[key])}
        if not doc and kind.name in loader.CORE_STEP_KINDS:
            doc = {"description": _PLUGIN_ACCESS_KEY}
        if key == "offset" and kind.byte_offset:
            # an access's address in the vma, aligned to its width (the loader checks)
            base = {"type": "integer", "minimum": 0}
            doc = {"description": _BYTE_OFFSET_DOC}
        props[key] = {**base, **doc}
    if not kind.faults:
        props["at"] = {"enum": list(RACE_POINTS), **_doc("step", "at")}
        props["actor"] = {"type": "string", "pattern": _NAME_PATTERN, **_doc("step", "actor")}
    expect_keys = kind.expect_keys()
    if expect_keys:
        if set(expect_keys) == set(EXPECT_KEYS):
            props["expect"] = {"$ref": "#/$defs/expect", **_doc("step", "expect")}
        elif set(expect_keys) == set(ACCESS_EXPECT_KEYS):
            props["expect"] = {
                "$ref": "#/$defs/expect",
                "propertyNames": {"enum": list(ACCESS_EXPECT_KEYS)},
                **_doc("step", "expect"),
            }
        else:
            props["expect"] = {**_expect_schema(expect_keys), **_doc("step", "expect")}
    if kind.default_size is not None and "size" in props:
        props["size"]["default"] = format_size(kind.default_size)
    out: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "required": ["do", *kind.required],
    }
    if kind.extra is None:
        out["additionalProperties"] = False
    else:
        # device_reset: the device's own keys (checked per device below)
        out["additionalProperties"] = _type(kind.extra)
        if kind.name == "device_reset" and device_kinds:
            out["allOf"] = [
                {
                    "if": {"properties": {"device": {"const": name}}, "required": ["device"]},
                    "then": {
                        "properties": {k: _type(t) for k, t in dk.reset_fields.items()},
                        "propertyNames": {
                            "enum": sorted(
                                {"do", "at", "actor", "expect", *kind.fields, *dk.reset_fields}
                            )
                        },
                    },
                }
                for name, dk in sorted(device_kinds.items())
            ]
    return out


def _expect_schema(
    keys: Iterable[str] = EXPECT_KEYS, outcomes: Iterable[str] = ()
) -> dict[str, Any]:
    every: dict[str, dict[str, Any]] = {
        "outcome": {"enum": [*OUTCOMES, *outcomes]},
        "writable": {"type": "boolean"},
        "frame": {"anyOf": [{"enum": list(FRAME_WORDS)}, {"type": "integer", "minimum": 0}]},
        "page_size": {"$ref": "#/$defs/size"},
        "verdicts": {"type": "array", "items": {"enum": list(VERDICTS)}, "uniqueItems": True},
        "value": {"type": "integer", "minimum": 0},
        "young": {"type": "boolean"},
        "uffd_faults": {"type": "integer", "minimum": 0},
    }
    return {
        "type": "object",
        "properties": {k: {**every[k], **_doc("expect", k)} for k in keys},
        "additionalProperties": False,
    }


def _device_schema(device_kinds: Mapping[str, DeviceKind]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {"kind": {"type": "string", **_doc("device", "kind")}},
        "required": ["kind"],
    }
    if device_kinds:
        out["properties"]["kind"]["enum"] = sorted(device_kinds)
        out["allOf"] = [
            {
                "if": {"properties": {"kind": {"const": name}}},
                "then": {
                    "properties": {k: _type(t) for k, t in dk.fields.items()},
                    "required": list(dk.required),
                    "propertyNames": {"enum": ["kind", *dk.fields]},
                },
            }
            for name, dk in sorted(device_kinds.items())
        ]
    return out


def _vma_schema() -> dict[str, Any]:
    defaults = _vma_defaults()
    kinds: dict[str, dict[str, Any]] = {
        "name": {"type": "string", "pattern": _NAME_PATTERN},
        "size": {"$ref": "#/$defs/size"},
        "backing": {"enum": list(BACKINGS)},
        "prot": {"enum": list(PROTS)},
        "shared": {"type": "boolean"},
        "huge": {"$ref": "#/$defs/size"},
        "populate": {"type": "boolean"},
        "device": {"type": "string"},
        "pgoff": {"type": "integer", "minimum": 0},
        "pfn_kind": {"enum": list(PFN_KINDS)},
        "fault_retry": {"type": "integer", "minimum": 0},
    }
    props = {}
    for key in loader._VMA_KEYS:
        p = {**kinds[key], **_doc("vma", key)}
        if key in defaults and key not in ("huge",):
            p["default"] = defaults[key]
        props[key] = p
    return {
        "type": "object",
        "properties": props,
        "required": ["name", "size", "backing"],
        "additionalProperties": False,
        "allOf": [
            {
                "if": {"properties": {"backing": {"const": "hugetlbfs"}}},
                "then": {"required": ["huge"]},
            },
            {
                "if": {"properties": {"backing": {"const": "device"}}},
                "then": {"required": ["device"]},
            },
        ],
    }


def _memslot_schema() -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {
        "gpa": {"type": "integer", "minimum": 0, "multipleOf": PAGE_SIZE},
        "vma": {"type": "string"},
        "offset": {"type": "integer", "minimum": 0, "multipleOf": PAGE_SIZE, "default": 0},
        "size": {"$ref": "#/$defs/size"},
        "readonly": {"type": "boolean", "default": False},
    }
    return {
        "type": "object",
        "properties": {k: {**kinds[k], **_doc("memslot", k)} for k in loader._MEMSLOT_KEYS},
        "required": ["gpa", "vma"],
        "additionalProperties": False,
    }


def _dirty_schema() -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {
        "mode": {"enum": list(DIRTY_MODES)},
        "manual_protect": {"type": "boolean", "default": False},
        "initially_set": {"type": "boolean", "default": False},
        "ring_size": {"type": "integer", "minimum": 1},
    }
    return {
        "type": "object",
        "properties": {k: {**kinds[k], **_doc("dirty", k)} for k in DIRTY_KEYS},
        "additionalProperties": False,
    }


def _uffd_schema() -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {
        "vma": {"type": "string"},
        "offset": {"type": "integer", "minimum": 0, "multipleOf": PAGE_SIZE, "default": 0},
        "size": {"$ref": "#/$defs/size"},
        "mode": {"enum": list(UFFD_MODES), "default": "missing"},
        "sigbus": {"type": "boolean", "default": False},
    }
    return {
        "type": "object",
        "properties": {k: {**kinds[k], **_doc("uffd", k)} for k in loader._UFFD_KEYS},
        "required": ["vma"],
        "additionalProperties": False,
    }


def _schedule_schema() -> dict[str, Any]:
    points = [*RACE_POINTS, *loader.SCHEDULE_POINTS]
    props: dict[str, dict[str, Any]] = {
        "actor": {"type": "string"},
        "at": {"enum": points},
        "nth": {"type": "integer", "minimum": 1},
        "run": {"type": "string"},
    }
    return {
        "type": "object",
        "properties": {k: {**v, **_doc("schedule", k)} for k, v in props.items()},
        "required": ["at", "run"],
        "additionalProperties": False,
    }


def _known_schema(outcomes: Iterable[str] = ()) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {
        "strategy": {"type": "string", "pattern": _NAME_PATTERN},
        "arch": {"type": "string", "pattern": _NAME_PATTERN},
        "verdicts": {"type": "array", "items": {"enum": list(VERDICTS)}},
        "outcomes": {
            "type": "object",
            "patternProperties": {"^[0-9]+$": {"enum": [*KNOWN_STEP_OUTCOMES, *outcomes]}},
            "additionalProperties": False,
        },
        "failures": {
            "type": "object",
            "patternProperties": {
                "^[0-9]+$": {"type": "array", "items": {"enum": list(EXPECT_KEYS)}}
            },
            "additionalProperties": False,
        },
        "reason": {"type": "string", "minLength": 1},
    }
    return {
        "type": "object",
        "properties": {k: {**kinds[k], **_doc("known", k)} for k in loader._KNOWN_KEYS},
        "required": ["strategy", "verdicts", "reason"],
        "additionalProperties": False,
    }


def json_schema(
    step_kinds: Mapping[str, StepKind] | None = None,
    device_kinds: Mapping[str, DeviceKind | str] | None = None,
    arches: Collection[str] | None = None,
    outcomes: Collection[str] | None = None,
) -> dict[str, Any]:
    """The scenario format as a JSON Schema (draft 2020-12).

    :param step_kinds: plugins' step kinds; by default those every installed
        plugin contributes.
    :param device_kinds: device kinds by name; by default the installed ones.
    :param arches: arch names for ``arch``'s ``enum``; by default the
        installed arch plugins (``()`` for any string).
    :param outcomes: step outcomes plugins add (``outcomes`` hook); by
        default those of the installed plugins.
    """
    if step_kinds is None or device_kinds is None or arches is None:
        from kvmsim.registry import discover, scenario_schema

        steps, devices = scenario_schema()
        step_kinds = steps if step_kinds is None else step_kinds
        device_kinds = devices if device_kinds is None else device_kinds
        arches = sorted(discover().get("arch", {})) if arches is None else arches
    if outcomes is None:
        from kvmsim.registry import plugin_outcomes

        outcomes = plugin_outcomes()
    extra_outcomes = sorted(set(outcomes) - set(KNOWN_STEP_OUTCOMES))
    described = {k: v for k, v in device_kinds.items() if isinstance(v, DeviceKind)}
    # the core kinds, with what plugins add to the access step
    kinds = dict(loader._step_kinds(step_kinds))
    arch: dict[str, Any] = {"type": "string", **_doc("top", "arch")}
    if arches:
        arch["enum"] = sorted(arches)

    def array(ref: str, key: str) -> dict[str, Any]:
        return {"type": "array", "items": {"$ref": f"#/$defs/{ref}"}, **_doc("top", key)}

    top: dict[str, Any] = {
        "name": {"type": "string", "pattern": _NAME_PATTERN, **_doc("top", "name")},
        "description": {"type": "string", **_doc("top", "description")},
        "arch": arch,
        "concurrent": {"type": "boolean", **_doc("top", "concurrent")},
        "vma": array("vma", "vma"),
        "memslot": array("memslot", "memslot"),
        "device": array("device", "device"),
        "dirty": {"$ref": "#/$defs/dirty", **_doc("top", "dirty")},
        "uffd": array("uffd", "uffd"),
        "step": array("step", "step"),
        "schedule": array("schedule", "schedule"),
        "known": array("known", "known"),
    }
    assert list(top) == list(loader._TOP_KEYS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "kvmsim scenario",
        "description": "A kvmsim scenario file (TOML); see docs/scenarios.md.",
        "type": "object",
        "properties": top,
        "required": ["name"],
        "additionalProperties": False,
        "$defs": {
            "size": {
                "description": "bytes as an integer, or digits with a unit K, M or G "
                "(powers of 1024); a positive multiple of 4K",
                "anyOf": [
                    {"type": "integer", "minimum": PAGE_SIZE, "multipleOf": PAGE_SIZE},
                    {"type": "string", "pattern": _SIZE_PATTERN},
                ],
            },
            "vma": _vma_schema(),
            "memslot": _memslot_schema(),
            "dirty": _dirty_schema(),
            "device": _device_schema(described),
            "uffd": _uffd_schema(),
            "step": {
                "type": "object",
                "required": ["do"],
                "properties": {"do": {"enum": sorted(kinds), **_doc("step", "do")}},
                "oneOf": [{"$ref": f"#/$defs/step_{name}"} for name in sorted(kinds)],
            },
            **{f"step_{name}": _step_schema(k, described) for name, k in sorted(kinds.items())},
            "expect": _expect_schema(outcomes=extra_outcomes),
            "schedule": _schedule_schema(),
            "known": _known_schema(extra_outcomes),
        },
    }


# ------------------------------------------------------------------ the docs

REF_START: Final = "<!-- scenario-keys:start (generated by python -m kvmsim.scenario.schema) -->"
REF_END: Final = "<!-- scenario-keys:end -->"


def _type_text(s: dict[str, Any], defs: Mapping[str, Any]) -> str:
    if "$ref" in s:
        return s["$ref"].rsplit("/", 1)[1]
    if "const" in s:
        return f"`{s['const']}`"
    if "enum" in s:
        return " \\| ".join(f"`{v}`" for v in s["enum"])
    if "anyOf" in s:
        return " or ".join(_type_text(x, defs) for x in s["anyOf"])
    t = s.get("type", "any")
    if t == "array":
        return "array of " + _type_text(s.get("items", {}), defs)
    return " or ".join(t) if isinstance(t, list) else str(t)


def _default_text(default: str | None) -> str:
    if not default:
        return "—"
    literal = default[0] in '0123456789"[{' or default in ("true", "false")
    return f"`{default}`" if literal else default


def _rows(
    docs: Mapping[str, tuple[str | None, str]],
    schema: dict[str, Any],
    defs: Mapping[str, Any],
    extra: str = "",
) -> list[str]:
    required = set(schema.get("required", ()))
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, s in schema["properties"].items():
        default, meaning = docs.get(key, (None, ""))
        # the schema's own sentence wins (a kind may say more than the table)
        meaning = s.get("description") or meaning
        if not meaning:
            meaning = extra
        if "default" in s:
            default = (
                repr(s["default"]).lower()
                if isinstance(s["default"], bool)
                else (f'"{s["default"]}"' if isinstance(s["default"], str) else str(s["default"]))
            )
        shown = "**required**" if key in required else _default_text(default)
        out.append(f"| `{key}` | {_type_text(s, defs)} | {shown} | {meaning} |")
    return out


def _keys(cond: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    props = cond["then"]["properties"]
    return ", ".join(f"`{k}` ({_type_text(v, defs)})" for k, v in props.items())


def builtin_schema() -> dict[str, Any]:
    """:func:`json_schema` with only what kvmsim's own plugins contribute, so
    the generated docs do not depend on what else is installed."""
    from kvmsim import registry

    steps, devices = registry.scenario_schema()
    found = registry.discover()
    foreign_steps: set[str] = set()
    for kind in ("arch", "device"):
        for entry in found.get(kind, {}).values():
            if entry.dist == _OWN_DIST:
                continue
            try:
                pm = registry._new_manager()  # the manager scenario_schema uses
                pm.register(registry.load(entry))
            except Exception:
                continue
            foreign_steps |= {k.name for kinds in pm.hook.step_kinds() for k in kinds or ()}

    def builtin(kind: str, name: str) -> bool:
        entry = found.get(kind, {}).get(name)
        return entry is not None and entry.dist == _OWN_DIST

    return json_schema(
        step_kinds={n: k for n, k in steps.items() if n not in foreign_steps},
        device_kinds={n: d for n, d in devices.items() if builtin("device", n)},
        arches=[n for n in found.get("arch", {}) if builtin("arch", n)],
        outcomes=[
            o
            for o, (plugin, _) in registry.plugin_outcomes().items()
            if builtin(*plugin.split(":", 1))
        ],
    )


def markdown_reference(schema: dict[str, Any] | None = None) -> str:
    """The generated key reference of docs/scenarios.md: one table per
    scenario table and per step kind, built from :func:`builtin_schema`."""
    schema = schema or builtin_schema()
    defs = schema["$defs"]
    lines = [REF_START, "", "### Top level", ""]
    lines += _rows(KEY_DOCS["top"], schema, defs)
    for name, title in (
        ("vma", "[[vma]]"),
        ("memslot", "[[memslot]]"),
        ("dirty", "[dirty]"),
        ("device", "[[device]]"),
        ("uffd", "[[uffd]]"),
        ("expect", "expect"),
        ("schedule", "[[schedule]]"),
        ("known", "[[known]]"),
    ):
        lines += ["", f"### {title}", ""]
        lines += _rows(KEY_DOCS[name], defs[name], defs)
        if name == "device":
            for cond in defs[name].get("allOf", ()):
                kind = cond["if"]["properties"]["kind"]["const"]
                lines += ["", f'`kind = "{kind}"` also takes: {_keys(cond, defs)}.']
                resets = [
                    c
                    for c in defs["step_device_reset"].get("allOf", ())
                    if c["if"]["properties"]["device"]["const"] == kind
                ]
                for c in resets:
                    lines.append(f'A `device_reset` of `"{kind}"` takes: {_keys(c, defs)}.')
    lines += ["", "### Step kinds", ""]
    # an access's own sentences win on its table, the common ones elsewhere
    access_docs = {**KEY_DOCS["step"], **KEY_DOCS["access"]}
    step_docs = {**KEY_DOCS["access"], **KEY_DOCS["step"]}
    plugin_key = "a plugin's key: see [Arch plugins' step kinds](#arch-plugins-step-kinds)"
    for name in defs["step"]["properties"]["do"]["enum"]:
        s = defs[f"step_{name}"]
        lines += ["", f'#### `do = "{name}"`', ""]
        lines += _rows(access_docs if name == "access" else step_docs, s, defs, plugin_key)
        if s.get("additionalProperties") not in (False, None):
            lines += ["", "Other keys are the device's: see [[device]] above."]
    lines += ["", REF_END]
    return "\n".join(lines)


def regenerate(doc: Path) -> None:
    """Rewrite the generated section of *doc* (docs/scenarios.md)."""
    text = doc.read_text()
    start = text.index(REF_START)
    end = text.index(REF_END) + len(REF_END)
    doc.write_text(text[:start] + markdown_reference() + text[end:])


if __name__ == "__main__":
    regenerate(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/scenarios.md"))
