"""Read scenario TOML into a validated :class:`~kvmsim.scenario.model.Scenario`.

Every problem in a file raises exactly one :class:`~kvmsim.errors.ScenarioError`
naming the file, the key path (``vma[0].size``, ``step[2].expect.outcome``) and
what was expected there; nothing else ever escapes, whatever the input
(a hypothesis test feeds it garbage to hold us to that).

Checks run in file order, and within a table unknown keys are reported before
missing ones, because a misspelt key is the usual cause of a missing one and
the unknown-key message suggests the right spelling.

Known defects (``[[known]]``)
-----------------------------
A scenario's ``expect`` tables say what a *correct* kernel does.  A strategy
that reproduces an old kernel's bug fails them; ``[[known]]`` records how, so
``kvmsim matrix`` can tell a reproduced historical bug (``kfail``) from a
simulator regression (``fail``)::

    [[known]]
    strategy = "generic_v4_16"       # the strategy's entry-point name
    arch = "x86_ept"                 # optional: only on this arch (default: every arch)
    verdicts = ["refcount_leak"]     # exactly the checker verdicts the run produces ([] allowed)
    outcomes = { 2 = "livelock" }    # optional: step index -> what that step ended in
    failures = { 2 = ["outcome"] }   # optional: step index -> the expect keys that fail there
    reason = "kernel-notes §L.1: kvm_release_pfn_clean (v4.16) skips the zero page's ref"

``verdicts`` and ``reason`` are required; one record per (strategy, arch).
``outcomes`` values are access outcomes or ``done`` / ``armed`` / ``none``
(a step not run after an oops).  A record with ``arch`` wins over one without.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final, NoReturn

from kvmsim.dirtylog import DIRTY_KEYS, DIRTY_LOG_STEP, dirty_spec, step_problem
from kvmsim.errors import PluginError, ScenarioError
from kvmsim.scenario import discard
from kvmsim.scenario.model import (
    ACCESS_EXPECT_KEYS,
    ADVICES,
    BACKINGS,
    CORE_STEP_KEYS,
    EXPECT_KEYS,
    FRAME_WORDS,
    KNOWN_STEP_OUTCOMES,
    MAX_VALUE,
    OPS,
    OUTCOMES,
    PFN_BACKINGS,
    PFN_KINDS,
    PROTS,
    RACE_POINTS,
    UFFD_MODES,
    VERDICTS,
    YOUNG_MODES,
    DeviceKind,
    Devices,
    DeviceSpec,
    DirtySpec,
    Expect,
    FieldType,
    KnownDefect,
    MemslotSpec,
    Scenario,
    StepKind,
    StepSpec,
    Switch,
    UffdSpec,
    VmaSpec,
)
from kvmsim.scenario.sizes import PAGE_SIZE, format_size, parse_size

#: HPAGE_PMD_SIZE of the model (x86-64 and ppc64 radix): the one shmem THP size
THP_SIZE: Final = 2 << 20

__all__ = ["CORE_STEP_KINDS", "load_scenario", "parse_scenario"]


_RANGE: Final[Mapping[str, FieldType]] = {"vma": str, "offset": int, "size": (int, str)}
_UFFD_EXPECT: Final = ("verdicts", "uffd_faults")

#: The step kinds every scenario may use.
CORE_STEP_KINDS: Final[Mapping[str, StepKind]] = MappingProxyType(
    {
        k.name: k
        for k in (
            # ea: the guest effective address, for MMUs that translate it
            # (HPT); it defaults to gpa in the runner.  width: access size in
            # bytes (default 8); value: what a store writes (default 0).
            StepKind(
                "access",
                {"vcpu": int, "gpa": int, "op": str, "ea": int, "width": int, "value": int},
                required=("gpa", "op"),
                faults=True,
            ),
            StepKind("munmap", _RANGE, required=("vma",)),
            StepKind("mprotect", {**_RANGE, "prot": str}, required=("vma", "prot")),
            # memory_failure() and a host store hit one page, not a range.
            StepKind("poison", _RANGE, required=("vma",), default_size=PAGE_SIZE),
            StepKind("migrate", _RANGE, required=("vma",)),
            StepKind("split_thp", _RANGE, required=("vma",)),
            # young: clear_young (default) or test_young over the range; the
            # answer is the step's expect.young
            StepKind(
                "age",
                {**_RANGE, "young": str},
                required=("vma",),
                expect=("verdicts", "young"),
            ),
            # advice: dontneed | remove | free (MADV_*); punch_hole:
            # fallocate(PUNCH_HOLE|KEEP_SIZE) on the vma's file
            StepKind("madvise", {**_RANGE, "advice": str}, required=("vma", "advice")),
            StepKind("punch_hole", _RANGE, required=("vma",)),
            # value: what the VMM stores at vma + offset, width bytes
            # (default HOST_WRITE_VALUE, a marker a guest load recognises)
            StepKind(
                "host_write",
                {**_RANGE, "value": int, "width": int},
                required=("vma",),
                # the store's fault may wait on a userfaultfd (kernel-notes §U.7)
                expect=("verdicts", "uffd_faults"),
                default_size=PAGE_SIZE,
                byte_offset=True,
            ),
            # the VMM loads width bytes at vma + offset; expect.value checks it
            StepKind(
                "host_read",
                {"vma": str, "offset": int, "width": int},
                required=("vma",),
                expect=("value", "verdicts", "uffd_faults"),
                default_size=PAGE_SIZE,
                byte_offset=True,
            ),
            # Device-specific keys (source = 3, ...) are not known here.
            StepKind(
                "device_reset",
                {"device": str},
                required=("device",),
                extra=(int, bool, str),
            ),
            # slot, action, expect_dirty, first/num, pml: kvmsim.dirtylog
            DIRTY_LOG_STEP,
            # The userfaultfd handler's ioctls, on a range a [[uffd]]
            # registers (default: one page of the vma); value: the first 8
            # bytes of each page UFFDIO_COPY installs.
            StepKind(
                "uffd_copy",
                {**_RANGE, "value": int},
                required=("vma",),
                expect=_UFFD_EXPECT,
                default_size=PAGE_SIZE,
            ),
            StepKind(
                "uffd_zeropage",
                _RANGE,
                required=("vma",),
                expect=_UFFD_EXPECT,
                default_size=PAGE_SIZE,
            ),
            StepKind(
                "uffd_continue",
                _RANGE,
                required=("vma",),
                expect=_UFFD_EXPECT,
                default_size=PAGE_SIZE,
            ),
            StepKind(
                "uffd_wake",
                _RANGE,
                required=("vma",),
                expect=_UFFD_EXPECT,
                default_size=PAGE_SIZE,
            ),
            # write(2) of value into the file behind a shmem or file vma, at
            # the vma's offset: the page cache gets the page, the vma no PTE
            StepKind(
                "pwrite",
                {"vma": str, "offset": int, "value": int},
                required=("vma",),
                default_size=PAGE_SIZE,
            ),
        )
    }
)

#: Step kinds that are the userfaultfd handler's ioctls (need a [[uffd]] range).
UFFD_STEP_KINDS: Final = ("uffd_copy", "uffd_zeropage", "uffd_continue", "uffd_wake")

_TOP_KEYS: Final = (
    "name",
    "description",
    "arch",
    "concurrent",
    "vma",
    "memslot",
    "device",
    "dirty",
    "uffd",
    "step",
    "schedule",
    "known",
)
_UFFD_KEYS: Final = ("vma", "offset", "size", "mode", "sigbus")
_SWITCH_KEYS: Final = ("actor", "at", "run", "nth")
#: Schedule-only points: where a choice is free (see kvmsim.explore.runtime).
SCHEDULE_POINTS: Final = ("start", "step_end", "blocked", "guest_retry")
_KNOWN_KEYS: Final = ("strategy", "arch", "verdicts", "outcomes", "failures", "reason")
_VMA_KEYS: Final = (
    "name",
    "size",
    "backing",
    "prot",
    "shared",
    "huge",
    "populate",
    "device",
    "pgoff",
    "pfn_kind",
    "fault_retry",
)
_MEMSLOT_KEYS: Final = ("gpa", "vma", "offset", "size", "readonly")

# Limits on what a scenario makes the model simulate, checked before any
# set-up work so that a typo (size = "64T") is one clear error, not minutes
# of work and a MemoryError.  docs/performance.md ("Scenario limits") lists them.
MAX_VMA_TOTAL: Final = 64 << 30
"""All vmas together: the host address space the model lays out (a
``pfnmap_linear`` BAR costs a record per 512 pages until touched)."""
MAX_RAM_TOTAL: Final = 8 << 30
"""Vmas whose pages are RAM frames the model allocates (anon, shmem, file,
hugetlbfs, and PFN backings with ``pfn_kind`` ram*): half the simulated RAM
with 4K base pages (4M frames), leaving room for COW and migration copies."""
MAX_POPULATE_TOTAL: Final = 1 << 30
"""Bytes ``populate = true`` faults in page by page at set-up (hugetlbfs
excluded: it populates whole huge pages)."""
MAX_GPA: Final = 1 << 52
"""The largest guest physical address space modelled (POWER9 radix: 52 bits)."""
ACCESS_WIDTHS: Final = (1, 2, 4, 8)
"""Access sizes in bytes: what KVM's MMIO exit carries (``kvm_run.mmio.data``
is 8 bytes on every arch) and what the modelled loads and stores use."""
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_MAX_GOT: Final = 60


class _Shown:
    """A stand-in for a long value in an error: its repr, cut short."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(value: object) -> object:
    # Keep the one-line error readable when the value is a big table.
    text = repr(value)
    if len(text) <= _MAX_GOT:
        return value
    return _Shown(text[: _MAX_GOT - 3] + "...")


def _keyname(key: str) -> str:
    # Junk keys may hold dots, spaces or newlines; quote them so the key
    # path stays unambiguous and on one line.
    if _BARE_KEY_RE.fullmatch(key):
        return key
    quoted = json.dumps(key, ensure_ascii=False)
    return quoted if quoted.isprintable() else json.dumps(key)


def _one_of(choices: Iterable[str]) -> str:
    listed = sorted(choices)
    return "one of " + ", ".join(listed) if listed else "nothing (none are available)"


def _is_type(value: object, types: FieldType) -> bool:
    tup = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in tup:
        return False
    return isinstance(value, tup)


def _type_name(types: FieldType) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    tup = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in tup)


def _a(do: str) -> str:
    """ "an 'access' step", "a 'munmap' step"."""
    return f"{'an' if do[:1] in 'aeiou' else 'a'} {do!r} step"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Reader:
    """Validation helpers bound to one file; each failure raises ScenarioError."""

    def __init__(self, source: str, plugin_outcomes: Iterable[str] = ()) -> None:
        self.source = source
        # what expect.outcome and known.outcomes may name: the core's words
        # and the plugins' (``outcomes`` hook)
        extra = tuple(o for o in plugin_outcomes if o not in KNOWN_STEP_OUTCOMES)
        self.outcomes = (*OUTCOMES, *extra)
        self.step_outcomes = (*KNOWN_STEP_OUTCOMES, *extra)

    def fail(
        self, key: str | None, message: str, expected: str | None = None, got: object = None
    ) -> NoReturn:
        raise ScenarioError(
            message,
            file=self.source,
            key=key,
            expected=expected,
            got=None if got is None else _shown(got),
        )

    def check_keys(
        self,
        table: Mapping[str, object],
        path: str,
        allowed: Collection[str],
        required: Iterable[str] = (),
        what: str = "",
    ) -> None:
        """Reject keys outside *allowed*, then report the first missing one."""
        for key in table:
            if key not in allowed:
                self.fail(
                    _join(path, key),
                    f"unknown key {key!r}{what}{_did_you_mean(key, allowed)}",
                    _one_of(allowed),
                )
        for key in required:
            if key not in table:
                self.fail(_join(path, key), "missing required key")

    def int_(self, key: str, value: object, *, align: int = 1) -> int:
        """A non-negative int (TOML hex literals welcome), multiple of *align*."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "wrong type", "a non-negative integer", value)
        if value < 0:
            self.fail(key, "must not be negative", "a non-negative integer", value)
        if value % align:
            self.fail(
                key,
                f"not aligned to {format_size(align)}",
                f"a multiple of {hex(align)}",
                _Shown(hex(value)),
            )
        return value

    def str_(self, key: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(key, "wrong type", "a string", value)
        return value

    def name(self, key: str, value: object) -> str:
        text = self.str_(key, value)
        if not _NAME_RE.fullmatch(text):
            self.fail(
                key,
                "not a valid name",
                "letters, digits, '_', '-', '.', starting with a letter or digit",
                value,
            )
        return text

    def bool_(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            self.fail(key, "wrong type", "true or false", value)
        return value

    def enum(self, key: str, value: object, choices: Collection[str], what: str) -> str:
        if not isinstance(value, str):
            self.fail(key, "wrong type", f"a string, {_one_of(choices)}", value)
        if value not in choices:
            self.fail(
                key, f"unknown {what}{_did_you_mean(value, choices)}", _one_of(choices), value
            )
        return value

    def size(self, key: str, value: object) -> int:
        try:
            return parse_size(value, key, file=self.source)
        except ScenarioError as exc:
            # Re-raised through fail() so a long value is cut short.
            self.fail(exc.key, exc.message, exc.expected, exc.got)

    def table(self, key: str, value: object) -> Mapping[str, object]:
        if not isinstance(value, dict):
            self.fail(key, "wrong type", "a table", value)
        return value

    def tables(self, doc: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
        """The array of tables ``[[key]]`` (empty if absent)."""
        value = doc.get(key, [])
        if not isinstance(value, list):
            self.fail(key, "wrong type", f"an array of tables ([[{key}]])", value)
        return [self.table(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _join(path: str, key: str) -> str:
    return f"{path}.{_keyname(key)}" if path else _keyname(key)


def load_scenario(
    path: str | Path,
    *,
    devices: Devices | None = None,
    step_kinds: Mapping[str, StepKind] | None = None,
    arches: Collection[str] | None = None,
    points: Collection[str] | None = None,
    outcomes: Collection[str] | None = None,
) -> Scenario:
    """Read and validate the scenario file at *path*.

    :param devices: the device kinds available (device plugin names); when
        given, ``[[device]]`` kinds and device-backed vmas must be among them.
    :param step_kinds: extra step kinds provided by plugins, by name; by
        default those of every installed plugin (``{}`` for none).
    :param arches: the arch names available; when given, ``arch`` must be one.
    :param points: yield points plugins declare (valid ``at`` values beside
        the core's); by default those of every installed plugin.
    :param outcomes: step outcomes plugins declare (valid in
        ``expect.outcome`` and ``known.outcomes`` beside the core's); by
        default those of every installed plugin.
    :raises ScenarioError: the file cannot be read or is not a valid scenario.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read the file: {exc.strerror or exc}", file=source) from None
    try:
        # utf-8-sig: tolerate the BOM some Windows editors write.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"not UTF-8 text (bad byte at offset {exc.start})", file=source
        ) from None
    return parse_scenario(
        text,
        source,
        devices=devices,
        step_kinds=step_kinds,
        arches=arches,
        points=points,
        outcomes=outcomes,
    )


def parse_scenario(
    text: str,
    source: str,
    *,
    devices: Devices | None = None,
    step_kinds: Mapping[str, StepKind] | None = None,
    arches: Collection[str] | None = None,
    points: Collection[str] | None = None,
    outcomes: Collection[str] | None = None,
) -> Scenario:
    """Validate scenario TOML *text*; *source* is the file name errors show.

    Keyword arguments as for :func:`load_scenario`.

    :raises ScenarioError: *text* is not a valid scenario.
    :raises PluginError: *step_kinds* is inconsistent (a plugin bug, not the
        scenario's).
    """
    kinds = _step_kinds(step_kinds)
    if points is None:
        from kvmsim.registry import plugin_points

        points = plugin_points()
    at_points = (*RACE_POINTS, *sorted(p for p in points if p not in RACE_POINTS))
    if outcomes is None:
        from kvmsim.registry import plugin_outcomes

        outcomes = plugin_outcomes()
    r = _Reader(source, sorted(outcomes))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries "(at line L, column C)".
        r.fail(None, f"TOML syntax error: {exc}")
    except ValueError as exc:
        # e.g. an integer literal longer than int() accepts
        r.fail(None, f"TOML value error: {exc}")
    except RecursionError:
        r.fail(None, "TOML nested too deeply")

    r.check_keys(doc, "", _TOP_KEYS, required=("name",))
    name = r.name("name", doc["name"])
    description = r.str_("description", doc.get("description", ""))
    arch = None
    if "arch" in doc:
        arch = r.str_("arch", doc["arch"])
        if arches is not None and arch not in arches:
            r.fail("arch", f"unknown arch{_did_you_mean(arch, arches)}", _one_of(arches), arch)

    device_specs = _devices(r, r.tables(doc, "device"), devices)
    vmas = _vmas(r, r.tables(doc, "vma"), devices, {d.kind for d in device_specs})
    memslots = _memslots(r, r.tables(doc, "memslot"), vmas)
    uffd = _uffds(r, r.tables(doc, "uffd"), vmas)
    steps = _steps(
        r,
        r.tables(doc, "step"),
        kinds,
        vmas,
        {d.kind for d in device_specs},
        _device_kinds(devices),
        at_points,
    )
    for s in steps:
        if s.do == "dirty_log":
            bad = step_problem(s.params, len(memslots))
            if bad is not None:
                r.fail(f"step[{s.index}].{bad[0]}", bad[1], bad[2], bad[3])
    dirty = DirtySpec()
    if "dirty" in doc:
        table = r.table("dirty", doc["dirty"])
        r.check_keys(table, "dirty", DIRTY_KEYS)
        dirty = dirty_spec(table, r.fail)
    _uffd_steps(r, steps, uffd, vmas)
    known = _known(r, r.tables(doc, "known"), arch, steps)
    concurrent = r.bool_("concurrent", doc.get("concurrent", False))
    schedule = _schedule(r, r.tables(doc, "schedule"), concurrent, steps, kinds, at_points)
    return Scenario(
        name=name,
        description=description,
        arch=arch,
        vmas=tuple(vmas.values()),
        memslots=memslots,
        devices=device_specs,
        steps=steps,
        source=source,
        known=known,
        concurrent=concurrent,
        schedule=schedule,
        dirty=dirty,
        uffd=uffd,
    )


def _uffds(
    r: _Reader, tables: list[Mapping[str, object]], vmas: Mapping[str, VmaSpec]
) -> tuple[UffdSpec, ...]:
    """The ``[[uffd]]`` registrations: a range of a vma that can userfault
    (anonymous, shmem, hugetlbfs: ``vma_can_userfault``), MISSING or MINOR
    (MINOR on shmem and hugetlbfs only), huge page aligned on hugetlbfs."""
    out: list[UffdSpec] = []
    for i, t in enumerate(tables):
        path = f"uffd[{i}]"
        r.check_keys(t, path, _UFFD_KEYS, required=("vma",))
        vma = _vma_ref(r, f"{path}.vma", t["vma"], vmas)
        offset, size = _range(r, path, t, vma, None)
        mode = r.enum(f"{path}.mode", t.get("mode", "missing"), UFFD_MODES, "mode")
        shmem = vma.backing == "shmem" or (vma.backing == "anon" and vma.shared)
        if vma.backing not in ("anon", "shmem", "hugetlbfs"):
            r.fail(
                f"{path}.vma",
                f"UFFDIO_REGISTER fails with -EINVAL on backing {vma.backing!r} "
                "(vma_can_userfault: anonymous, shmem or hugetlbfs memory only)",
                "a vma backed by anon, shmem or hugetlbfs",
                vma.name,
            )
        if mode == "minor" and not (shmem or vma.backing == "hugetlbfs"):
            r.fail(
                f"{path}.mode",
                "MINOR faults exist only where a page cache can hold the page "
                "(shmem, hugetlbfs): UFFDIO_REGISTER fails with -EINVAL",
                "mode = 'missing' on private anonymous memory",
                mode,
            )
        if vma.huge and vma.backing == "hugetlbfs":
            for key, val in (("offset", offset), ("size", size)):
                if val % vma.huge:
                    r.fail(
                        f"{path}.{key}",
                        f"not aligned to the vma's {format_size(vma.huge)} huge pages "
                        "(UFFDIO_REGISTER fails with -EINVAL)",
                        f"a multiple of {hex(vma.huge)}",
                        _Shown(hex(val)),
                    )
        sigbus = r.bool_(f"{path}.sigbus", t.get("sigbus", False))
        if out and sigbus != out[0].sigbus:
            # UFFDIO_API sets the features of the one userfaultfd, not of a range
            r.fail(
                f"{path}.sigbus",
                "UFFD_FEATURE_SIGBUS belongs to the process's one userfaultfd (UFFDIO_API), "
                "not to a registered range: every [[uffd]] must say the same",
                f"sigbus = {str(out[0].sigbus).lower()}, as uffd[0] has",
                sigbus,
            )
        out.append(
            UffdSpec(index=i, vma=vma.name, offset=offset, size=size, mode=mode, sigbus=sigbus)
        )
    return tuple(out)


def _uffd_steps(
    r: _Reader,
    steps: tuple[StepSpec, ...],
    uffd: tuple[UffdSpec, ...],
    vmas: Mapping[str, VmaSpec],
) -> None:
    """A userfaultfd ioctl step needs a [[uffd]] registration covering its
    range (the ioctl would fail with -ENOENT); UFFDIO_CONTINUE a MINOR one,
    UFFDIO_ZEROPAGE no hugetlbfs; a hugetlbfs range is whole huge pages.  A
    ``pwrite`` needs a file behind its vma."""
    for s in steps:
        path = f"step[{s.index}]"
        if s.do in ("uffd_copy", "pwrite") and "value" in s.params:
            value = r.int_(f"{path}.value", s.params["value"])
            if value > MAX_VALUE:
                r.fail(f"{path}.value", "wider than 8 bytes", "an integer below 2**64", value)
        if s.do == "pwrite":
            v = vmas[s.vma or ""]
            if not (v.backing in ("shmem", "file") or (v.backing == "anon" and v.shared)):
                r.fail(
                    f"{path}.vma",
                    f"pwrite needs a file behind the vma (shmem, memfd or a file), "
                    f"not backing {v.backing!r}",
                    "a vma backed by shmem, file, or shared anon",
                    v.name,
                )
            continue
        if s.do not in UFFD_STEP_KINDS:
            continue
        v = vmas[s.vma or ""]
        size = s.size or PAGE_SIZE
        end = s.offset + size
        covering = [
            u for u in uffd if u.vma == v.name and u.offset <= s.offset and end <= u.offset + u.size
        ]
        if not covering:
            r.fail(
                f"{path}.vma",
                f"no [[uffd]] registers {v.name} + {hex(s.offset)}..{hex(end)}: "
                f"a {s.do} there fails with -ENOENT",
                "a [[uffd]] table registering a range of this vma that covers the step's range",
                v.name,
            )
        if s.do == "uffd_continue" and not any(u.mode == "minor" for u in covering):
            r.fail(
                f"{path}.vma",
                "UFFDIO_CONTINUE resolves MINOR faults: the range is not registered MINOR",
                "a [[uffd]] with mode = 'minor' covering the range",
                v.name,
            )
        if v.backing == "hugetlbfs":
            if s.do == "uffd_zeropage":
                r.fail(
                    f"{path}.do",
                    "UFFDIO_ZEROPAGE fails with -EINVAL on hugetlbfs",
                    "uffd_copy or uffd_continue on a hugetlbfs vma",
                    s.do,
                )
            for key, val in (("offset", s.offset), ("size", size)):
                if val % v.huge:
                    r.fail(
                        f"{path}.{key}",
                        f"not aligned to the vma's {format_size(v.huge)} huge pages (-EINVAL)",
                        f"a multiple of {hex(v.huge)}",
                        _Shown(hex(val)),
                    )


def _schedule(
    r: _Reader,
    tables: list[Mapping[str, object]],
    concurrent: bool,
    steps: tuple[StepSpec, ...],
    kinds: Mapping[str, StepKind],
    at_points: Collection[str] = RACE_POINTS,
) -> tuple[Switch, ...]:
    """A concurrent scenario's ``[[schedule]]`` switches, and the checks that
    need the whole step list (actors, ``at``)."""
    actors = {s.actor_name(kinds[s.do].faults) for s in steps}
    for s in steps:
        if s.actor is not None and not concurrent:
            r.fail(
                f"step[{s.index}].actor",
                "actors exist only in a concurrent scenario",
                "concurrent = true at the top, or no 'actor'",
                s.actor,
            )
        if s.at is not None and concurrent:
            r.fail(
                f"step[{s.index}].at",
                "a concurrent scenario places events with [[schedule]] switches "
                "(or lets kvmsim explore find them), not with 'at'",
                "no 'at' on this step",
                s.at,
            )
    if tables and not concurrent:
        r.fail("schedule", "a schedule needs concurrent = true", "concurrent = true at the top")
    out: list[Switch] = []
    for i, t in enumerate(tables):
        path = f"schedule[{i}]"
        r.check_keys(t, path, _SWITCH_KEYS, required=("at", "run"))
        at = r.enum(f"{path}.at", t["at"], (*at_points, *SCHEDULE_POINTS), "point")
        if at == "start":  # the first choice: nobody reached anything yet
            if "actor" in t:
                r.fail(f"{path}.actor", "the start has no actor", "no 'actor' with at = 'start'")
            actor = ""
        else:
            if "actor" not in t:
                r.fail(f"{path}.actor", "missing required key", _one_of(sorted(actors)))
            actor = r.enum(f"{path}.actor", t["actor"], sorted(actors), "actor")
        run = r.enum(f"{path}.run", t["run"], sorted(actors), "actor")
        nth = r.int_(f"{path}.nth", t.get("nth", 1))
        if nth < 1:
            r.fail(f"{path}.nth", "must be at least 1", "1 for the first arrival", nth)
        out.append(Switch(actor=actor, at=at, run=run, nth=nth))
    return tuple(out)


def _known(
    r: _Reader,
    tables: list[Mapping[str, object]],
    arch: str | None,
    steps: tuple[StepSpec, ...],
) -> tuple[KnownDefect, ...]:
    """The ``[[known]]`` records (see the module docstring)."""
    out: list[KnownDefect] = []
    seen: dict[tuple[str, str | None], int] = {}
    for i, t in enumerate(tables):
        path = f"known[{i}]"
        r.check_keys(t, path, _KNOWN_KEYS, required=("strategy", "verdicts", "reason"))
        strategy = r.name(f"{path}.strategy", t["strategy"])
        karch = r.name(f"{path}.arch", t["arch"]) if "arch" in t else None
        if karch is not None and arch is not None and karch != arch:
            r.fail(
                f"{path}.arch",
                f"the scenario runs only on {arch!r}",
                f"no arch, or arch = {arch!r}",
                karch,
            )
        if (strategy, karch) in seen:
            r.fail(
                f"{path}.strategy",
                f"a record for this strategy and arch is already at known[{seen[strategy, karch]}]",
                "one [[known]] per (strategy, arch)",
                strategy,
            )
        seen[strategy, karch] = i
        raw = t["verdicts"]
        if not isinstance(raw, list):
            r.fail(f"{path}.verdicts", "wrong type", "an array of verdict names", raw)
        verdicts = [
            r.enum(f"{path}.verdicts[{j}]", v, VERDICTS, "verdict") for j, v in enumerate(raw)
        ]
        reason = r.str_(f"{path}.reason", t["reason"]).strip()
        if not reason:
            r.fail(f"{path}.reason", "empty", "the kernel semantics the defect follows from")
        outcomes: list[tuple[int, str]] = []
        if "outcomes" in t:
            for key, value in r.table(f"{path}.outcomes", t["outcomes"]).items():
                step = _step_key(r, f"{path}.outcomes", key, steps)
                outcomes.append(
                    (
                        step,
                        r.enum(
                            f"{path}.outcomes.{_keyname(key)}",
                            value,
                            r.step_outcomes,
                            "outcome",
                        ),
                    )
                )
        failures: list[tuple[int, tuple[str, ...]]] = []
        if "failures" in t:
            for key, value in r.table(f"{path}.failures", t["failures"]).items():
                step = _step_key(r, f"{path}.failures", key, steps)
                if not isinstance(value, list):
                    r.fail(
                        f"{path}.failures.{_keyname(key)}",
                        "wrong type",
                        "an array of expect keys",
                        value,
                    )
                names = [
                    r.enum(f"{path}.failures.{_keyname(key)}[{j}]", v, EXPECT_KEYS, "expect key")
                    for j, v in enumerate(value)
                ]
                failures.append((step, tuple(sorted(set(names)))))
        out.append(
            KnownDefect(
                strategy=strategy,
                arch=karch,
                verdicts=tuple(sorted(set(verdicts))),
                outcomes=tuple(sorted(outcomes)),
                failures=tuple(sorted(failures)),
                reason=reason,
            )
        )
    return tuple(out)


def _step_key(r: _Reader, path: str, key: str, steps: tuple[StepSpec, ...]) -> int:
    """A ``known.outcomes`` / ``known.failures`` key: a step index, as TOML text."""
    if not key.isdigit() or int(key) >= len(steps):
        r.fail(
            f"{path}.{_keyname(key)}",
            "not a step index",
            f"an index from 0 to {len(steps) - 1}" if steps else "no steps to name",
            key,
        )
    return int(key)


def _step_kinds(extra: Mapping[str, StepKind] | None) -> Mapping[str, StepKind]:
    if extra is None:
        # by default, the step kinds of every installed arch and device plugin
        from kvmsim.registry import scenario_schema

        extra = scenario_schema()[0]
    if not extra:
        return CORE_STEP_KINDS
    merged: dict[str, StepKind] = {}
    for name, kind in extra.items():
        if not isinstance(kind, StepKind):
            raise PluginError(f"step kind {name!r} is not a StepKind: {kind!r}")
        if name == "access" and kind.name == name:
            merged[name] = _extend_access(kind)
            continue
        if name in CORE_STEP_KINDS:
            raise PluginError(f"step kind {name!r} is a core step kind and cannot be redefined")
        if kind.name != name:
            raise PluginError(f"step kind registered as {name!r} is named {kind.name!r}")
        for key in ("do", "at", "expect"):
            if key in kind.fields:
                raise PluginError(f"step kind {name!r}: {key!r} cannot be a field")
        missing = set(kind.required) - set(kind.fields)
        if missing:
            raise PluginError(f"step kind {name!r}: required keys not in fields: {sorted(missing)}")
        merged[name] = kind
    return {**CORE_STEP_KINDS, **merged}


def _extend_access(more: StepKind) -> StepKind:
    """The core ``access`` kind with the keys plugins add to it (a
    ``step_kinds`` entry named ``access``: its ``fields`` only)."""
    core = CORE_STEP_KINDS["access"]
    if not more.fields or more != StepKind(core.name, more.fields):
        raise PluginError(
            "a plugin extends the core 'access' step with StepKind('access', fields) "
            "and nothing else (its keys are optional), not by redefining it"
        )
    taken = sorted(set(more.fields) & {*core.fields, *_ALL_STEP_KEYS})
    if taken:
        raise PluginError(f"the access step already has key(s) {taken}: a plugin cannot add them")
    return StepKind(
        core.name,
        {**core.fields, **more.fields},
        required=core.required,
        faults=core.faults,
        expect=core.expect,
    )


def _devices(
    r: _Reader, tables: list[Mapping[str, object]], available: Devices | None
) -> tuple[DeviceSpec, ...]:
    schemas = _device_kinds(available)
    specs: list[DeviceSpec] = []
    for i, t in enumerate(tables):
        path = f"device[{i}]"
        # Only "kind" is ours; every other key belongs to the device plugin.
        if "kind" not in t:
            r.fail(f"{path}.kind", "missing required key", "a device kind")
        kind = r.name(f"{path}.kind", t["kind"])
        if available is not None and kind not in available:
            r.fail(
                f"{path}.kind",
                f"unknown device kind{_did_you_mean(kind, available)}",
                _one_of(available),
                kind,
            )
        # vmas and steps name devices by kind, so a kind may appear once.
        for j, earlier in enumerate(specs):
            if earlier.kind == kind:
                r.fail(
                    f"{path}.kind",
                    f"a device of this kind is already declared at device[{j}]",
                    "one [[device]] per kind",
                    kind,
                )
        params = {k: v for k, v in t.items() if k != "kind"}
        schema = schemas.get(kind)
        if schema is not None:
            r.check_keys(
                params,
                path,
                {"kind", *schema.fields},
                schema.required,
                what=f" for a {kind!r} device",
            )
            for key, value in params.items():
                if not _is_type(value, schema.fields[key]):
                    r.fail(
                        f"{path}.{_keyname(key)}",
                        "wrong type",
                        _type_name(schema.fields[key]),
                        value,
                    )
        specs.append(DeviceSpec(kind, params))
    return tuple(specs)


def _device_kinds(available: Devices | None) -> Mapping[str, DeviceKind]:
    """The device schemas among *available* (none when only names are given)."""
    if isinstance(available, Mapping):
        return {k: v for k, v in available.items() if isinstance(v, DeviceKind)}
    return {}


def _vmas(
    r: _Reader,
    tables: list[Mapping[str, object]],
    available: Devices | None,
    declared: Collection[str],
) -> dict[str, VmaSpec]:
    vmas: dict[str, VmaSpec] = {}
    totals = {"all": 0, "ram": 0, "populate": 0}
    for i, t in enumerate(tables):
        spec = _vma(r, f"vma[{i}]", t, available, declared, vmas)
        vmas[spec.name] = spec
        _vma_limits(r, f"vma[{i}]", spec, totals)
    return vmas


def _vma_limits(r: _Reader, path: str, v: VmaSpec, totals: dict[str, int]) -> None:
    """Refuse the vma that takes the scenario over a simulated-memory limit."""
    ram = v.backing in ("anon", "shmem", "file", "hugetlbfs") or (
        v.backing in PFN_BACKINGS and v.pfn_kind != "mmio"
    )
    populate = v.populate and v.backing != "hugetlbfs"
    for what, counts, limit, key, words in (
        ("all", True, MAX_VMA_TOTAL, "size", "of vmas"),
        ("ram", ram, MAX_RAM_TOTAL, "size", "of RAM-backed vmas"),
        ("populate", populate, MAX_POPULATE_TOTAL, "populate", "populated at set-up"),
    ):
        if not counts:
            continue
        totals[what] += v.size
        if totals[what] > limit:
            r.fail(
                _join(path, key),
                f"the scenario would simulate {format_size(totals[what])} {words}, "
                f"over kvmsim's limit of {format_size(limit)}",
                f"at most {format_size(limit)} {words} in one scenario",
            )


def _vma(
    r: _Reader,
    path: str,
    t: Mapping[str, object],
    available: Devices | None,
    declared: Collection[str],
    vmas: Mapping[str, VmaSpec],
) -> VmaSpec:
    def k(key: str) -> str:
        return _join(path, key)

    r.check_keys(t, path, _VMA_KEYS, required=("name", "size", "backing"))
    name = r.name(k("name"), t["name"])
    if name in vmas:
        index = list(vmas).index(name)
        r.fail(
            k("name"), f"duplicate vma name, already used by vma[{index}]", "a unique name", name
        )
    size = r.size(k("size"), t["size"])
    backing = r.enum(k("backing"), t["backing"], BACKINGS, "backing")
    prot = r.enum(k("prot"), t.get("prot", "rw"), PROTS, "prot")
    shared = r.bool_(k("shared"), t.get("shared", False))
    populate = r.bool_(k("populate"), t.get("populate", False))
    pgoff = r.int_(k("pgoff"), t.get("pgoff", 0))

    huge = 0
    if "huge" in t:
        if backing not in ("anon", "shmem", "hugetlbfs"):
            why = (
                "a regular file's page cache gets no THP at fault time"
                if backing == "file"
                else "the kernel has no huge pages for it"
            )
            r.fail(
                k("huge"),
                f"huge pages do not apply to backing {backing!r} ({why})",
                "huge only with backing 'hugetlbfs', or 'anon' or 'shmem' (THP)",
            )
        huge = r.size(k("huge"), t["huge"])
        if huge <= PAGE_SIZE or huge & (huge - 1):
            r.fail(
                k("huge"),
                "not a huge page size",
                f"a power of two larger than {format_size(PAGE_SIZE)}",
                t["huge"],
            )
        if backing == "shmem" and huge != THP_SIZE:
            # shmem_alloc_hugepage allocates HPAGE_PMD_ORDER only
            r.fail(
                k("huge"),
                "not the THP size: shmem huge pages are PMD-sized",
                f"huge = '{format_size(THP_SIZE)}' on backing 'shmem'",
                t["huge"],
            )
    elif backing == "hugetlbfs":
        r.fail(
            k("huge"), "missing required key for backing 'hugetlbfs'", "a huge page size like '2M'"
        )
    if backing == "hugetlbfs" and size % huge:
        # mmap of hugetlbfs works in whole huge pages.
        r.fail(
            k("size"),
            f"not a whole number of {format_size(huge)} huge pages",
            f"a multiple of {format_size(huge)}",
            t["size"],
        )

    device = None
    if backing == "device":
        if "device" not in t:
            r.fail(k("device"), "missing required key for backing 'device'", "a device kind")
        device = r.str_(k("device"), t["device"])
        if available is not None and device not in available:
            r.fail(
                k("device"),
                f"unknown device kind{_did_you_mean(device, available)}",
                _one_of(available),
                device,
            )
        if device not in declared:
            r.fail(
                k("device"),
                "no [[device]] of this kind in the scenario",
                f"a [[device]] with kind = {device!r}",
                device,
            )
    elif "device" in t:
        r.fail(
            k("device"),
            f"device does not apply to backing {backing!r}",
            "device only with backing = 'device'",
        )

    pfn_kind = None
    if "pfn_kind" in t:
        if backing not in PFN_BACKINGS:
            r.fail(
                k("pfn_kind"),
                f"pfn_kind does not apply to backing {backing!r}",
                f"pfn_kind only with backing {_one_of(PFN_BACKINGS)}",
            )
        pfn_kind = r.enum(k("pfn_kind"), t["pfn_kind"], PFN_KINDS, "pfn_kind")
    elif backing in PFN_BACKINGS:
        pfn_kind = "mmio"  # remap_pfn_range of device memory is the usual case

    fault_retry = 0
    if "fault_retry" in t:
        if backing != "pfnmap_fault":
            r.fail(
                k("fault_retry"),
                f"fault_retry does not apply to backing {backing!r}",
                "fault_retry only with backing 'pfnmap_fault'",
            )
        fault_retry = r.int_(k("fault_retry"), t["fault_retry"])

    return VmaSpec(
        name=name,
        size=size,
        backing=backing,
        prot=prot,
        shared=shared,
        huge=huge,
        populate=populate,
        device=device,
        pgoff=pgoff,
        pfn_kind=pfn_kind,
        fault_retry=fault_retry,
    )


def _vma_ref(r: _Reader, key: str, value: object, vmas: Mapping[str, VmaSpec]) -> VmaSpec:
    name = r.str_(key, value)
    if name not in vmas:
        r.fail(key, f"no vma of this name{_did_you_mean(name, vmas)}", _one_of(vmas), name)
    return vmas[name]


def _range(
    r: _Reader,
    path: str,
    t: Mapping[str, object],
    vma: VmaSpec,
    default_size: int | None,
    byte_offset: bool = False,
) -> tuple[int, int]:
    """Resolve and check ``offset`` and ``size`` of a range inside *vma*;
    with *byte_offset* the offset is an address in the vma and the range
    starts at the page holding it."""
    offset = r.int_(f"{path}.offset", t.get("offset", 0), align=1 if byte_offset else PAGE_SIZE)
    base = offset - offset % PAGE_SIZE
    if offset >= vma.size:
        r.fail(
            f"{path}.offset",
            f"outside vma {vma.name!r} of size {format_size(vma.size)}",
            f"an offset below {hex(vma.size)}",
            _Shown(hex(offset)),
        )
    if "size" in t:
        size = r.size(f"{path}.size", t["size"])
    else:
        size = default_size if default_size is not None else vma.size - base
    if base + size > vma.size:
        key = f"{path}.size" if "size" in t else f"{path}.offset"
        r.fail(
            key,
            f"range {hex(base)}+{format_size(size)} runs past the end of vma "
            f"{vma.name!r} ({format_size(vma.size)})",
            f"offset + size <= {hex(vma.size)}",
        )
    return offset, size


def _memslots(
    r: _Reader, tables: list[Mapping[str, object]], vmas: Mapping[str, VmaSpec]
) -> tuple[MemslotSpec, ...]:
    slots: list[MemslotSpec] = []
    for i, t in enumerate(tables):
        path = f"memslot[{i}]"
        r.check_keys(t, path, _MEMSLOT_KEYS, required=("gpa", "vma"))
        gpa = r.int_(f"{path}.gpa", t["gpa"], align=PAGE_SIZE)
        vma = _vma_ref(r, f"{path}.vma", t["vma"], vmas)
        offset, size = _range(r, path, t, vma, None)
        if gpa + size > MAX_GPA:
            r.fail(
                f"{path}.gpa",
                f"guest range {hex(gpa)}+{format_size(size)} ends past the largest modelled "
                f"guest physical address space ({format_size(MAX_GPA)}, 52 bits)",
                f"gpa + size <= {hex(MAX_GPA)}",
            )
        readonly = r.bool_(f"{path}.readonly", t.get("readonly", False))
        for other in slots:
            if gpa < other.gpa + other.size and other.gpa < gpa + size:
                r.fail(
                    f"{path}.gpa",
                    f"guest range {hex(gpa)}-{hex(gpa + size - 1)} overlaps memslot[{other.index}] "
                    f"({hex(other.gpa)}-{hex(other.gpa + other.size - 1)})",
                    "memslots disjoint in guest physical space",
                )
        slots.append(MemslotSpec(i, gpa, vma.name, offset, size, readonly))
    return tuple(slots)


def _steps(
    r: _Reader,
    tables: list[Mapping[str, object]],
    kinds: Mapping[str, StepKind],
    vmas: Mapping[str, VmaSpec],
    declared_devices: Collection[str],
    device_kinds: Mapping[str, DeviceKind],
    at_points: Collection[str] = RACE_POINTS,
) -> tuple[StepSpec, ...]:
    steps = [
        _step(r, i, t, kinds, vmas, declared_devices, device_kinds, at_points)
        for i, t in enumerate(tables)
    ]
    faulting = _one_of(k.name for k in kinds.values() if k.faults)
    # A race event waits for the next faulting step; without one it would
    # silently never fire.
    for s in steps:
        if s.at is not None and not any(kinds[later.do].faults for later in steps[s.index + 1 :]):
            r.fail(
                f"step[{s.index}].at",
                "no later access step for this event to fire in",
                f"a later step of a kind that faults ({faulting})",
                s.at,
            )
    return tuple(steps)


def _step(
    r: _Reader,
    i: int,
    t: Mapping[str, object],
    kinds: Mapping[str, StepKind],
    vmas: Mapping[str, VmaSpec],
    declared_devices: Collection[str],
    device_kinds: Mapping[str, DeviceKind],
    at_points: Collection[str] = RACE_POINTS,
) -> StepSpec:
    path = f"step[{i}]"

    def k(key: str) -> str:
        return _join(path, key)

    if "do" not in t:
        r.fail(k("do"), "missing required key", _one_of(kinds))
    do = r.enum(k("do"), t["do"], kinds, "step kind")
    kind = kinds[do]
    expect_keys = kind.expect_keys()

    allowed = {"do", *kind.fields}
    if not kind.faults:
        allowed.update(("at", "actor"))
    if expect_keys:
        allowed.add("expect")
    for key in t:
        if key in allowed or (kind.extra is not None and key not in _ALL_STEP_KEYS):
            continue
        if key == "at":
            r.fail(
                k(key),
                "a guest access cannot fire at a race point; put 'at' on the "
                "host event step before it",
                "no 'at' on this step",
            )
        if key == "expect":
            r.fail(k(key), f"{_a(do)} cannot have expectations", "no 'expect' on this step")
        r.fail(
            k(key),
            f"unknown key {key!r} for {_a(do)}{_did_you_mean(key, allowed)}",
            _one_of(allowed),
        )
    for key in kind.required:
        if key not in t:
            r.fail(k(key), f"missing required key for {_a(do)}")

    vcpu = r.int_(k("vcpu"), t.get("vcpu", 0))
    gpa = r.int_(k("gpa"), t["gpa"]) if "gpa" in t else None
    op = r.enum(k("op"), t["op"], OPS, "op") if "op" in t else None
    prot = r.enum(k("prot"), t["prot"], PROTS, "prot") if "prot" in t else None
    at = r.enum(k("at"), t["at"], at_points, "race point") if "at" in t else None
    actor = r.name(k("actor"), t["actor"]) if "actor" in t else None
    if actor is not None and actor.startswith("vcpu"):
        r.fail(k("actor"), "vcpu actors run the guest's accesses", "another name, e.g. 'qemu2'")

    vma_name = None
    offset = 0
    size: int | None = None
    if "vma" in t:
        vma = _vma_ref(r, k("vma"), t["vma"], vmas)
        vma_name = vma.name
        offset, size = _range(r, path, t, vma, kind.default_size, kind.byte_offset)
    else:
        # A plugin kind may take offset/size without a vma.
        if "offset" in t:
            offset = r.int_(k("offset"), t["offset"])
        if "size" in t:
            size = r.size(k("size"), t["size"])

    params: dict[str, object] = {}
    for key, value in t.items():
        if key in ("do", "at", "expect", "actor") or key in CORE_STEP_KEYS:
            continue
        types = kind.fields.get(key, kind.extra)
        assert types is not None  # unknown keys were rejected above
        if not _is_type(value, types):
            r.fail(k(key), "wrong type", _type_name(types), value)
        if key == "device" and isinstance(value, str) and value not in declared_devices:
            r.fail(
                k(key),
                "no [[device]] of this kind in the scenario",
                f"a [[device]] with kind = {value!r}",
                value,
            )
        params[key] = value
    if do == "device_reset":
        _reset_params(r, path, params, device_kinds)
    elif do == "access":
        _access_params(r, path, params)
    elif do == "age" and "young" in params:
        r.enum(_join(path, "young"), params["young"], YOUNG_MODES, "young mode")
    elif do in ("madvise", "punch_hole") and vma_name is not None:
        _discard_params(r, path, do, params, vmas[vma_name])
    elif do in ("host_read", "host_write"):
        _host_access_params(r, path, params, offset)

    expect = None
    if "expect" in t:
        expect = _expect(r, k("expect"), t["expect"], do, expect_keys)
        if expect.young is not None and at is not None:
            r.fail(
                f"{path}.expect.young",
                "an event placed with 'at' fires inside a later fault, where its "
                "answer is not checked",
                "no expect.young on a step with 'at'",
            )
        if expect.value is not None and at is not None:
            r.fail(
                f"{path}.expect.value",
                "an event armed with 'at' runs inside a later fault and reports no value",
                "expect.value only on a step that runs in its place (no 'at')",
            )
        if expect.value is not None and op is not None and op != "read":
            r.fail(
                f"{path}.expect.value",
                f"a {op} returns no value: only a load sees one",
                "expect.value only with op = 'read'",
            )
    return StepSpec(
        index=i,
        do=do,
        vcpu=vcpu,
        gpa=gpa,
        op=op,
        vma=vma_name,
        offset=offset,
        size=size,
        prot=prot,
        at=at,
        expect=expect,
        params=params,
        actor=actor,
    )


def _access_params(r: _Reader, path: str, params: Mapping[str, object]) -> None:
    """An access's ``width`` (one of :data:`ACCESS_WIDTHS`), the ``value`` a
    store writes (fits in ``width`` bytes) and ``ea`` (an address)."""
    width = params.get("width", 8)
    if width not in ACCESS_WIDTHS:
        r.fail(
            _join(path, "width"),
            "not an access size",
            f"one of {', '.join(map(str, ACCESS_WIDTHS))} (bytes)",
            width,
        )
    assert isinstance(width, int)
    value = params.get("value", 0)
    assert isinstance(value, int)
    if not 0 <= value < 1 << (8 * width):
        r.fail(
            _join(path, "value"),
            f"does not fit in {width} byte(s)",
            f"an integer from 0 to {hex((1 << (8 * width)) - 1)}",
            value,
        )
    if "ea" in params:
        r.int_(_join(path, "ea"), params["ea"])


def _host_access_params(r: _Reader, path: str, params: Mapping[str, object], offset: int) -> None:
    """A host load's or store's ``width`` (one of :data:`ACCESS_WIDTHS`),
    its ``offset`` naturally aligned to it (one access, inside one page),
    and the ``value`` a store writes (fits in ``width`` bytes)."""
    width = params.get("width", 8)
    if width not in ACCESS_WIDTHS:
        r.fail(
            _join(path, "width"),
            "not an access size",
            f"one of {', '.join(map(str, ACCESS_WIDTHS))} (bytes)",
            width,
        )
    assert isinstance(width, int)
    if offset % width:
        r.fail(
            _join(path, "offset"),
            f"a {width}-byte access must be aligned to {width} bytes",
            f"a multiple of {width}",
            _Shown(hex(offset)),
        )
    value = params.get("value")
    if isinstance(value, int) and not 0 <= value < 1 << (8 * width):
        r.fail(
            _join(path, "value"),
            f"does not fit in {width} byte(s)",
            f"an integer from 0 to {hex((1 << (8 * width)) - 1)}",
            value,
        )


def _discard_params(
    r: _Reader, path: str, do: str, params: Mapping[str, object], vma: VmaSpec
) -> None:
    """A ``madvise`` step's ``advice``, and what the kernel refuses on the
    step's vma whatever ran before (kvmsim.scenario.discard)."""
    advice = None
    if do == "madvise":
        advice = r.enum(_join(path, "advice"), params["advice"], ADVICES, "advice")
    refused = discard.refusal(do, advice, vma.backing, vma.shared, vma.prot)
    if refused is not None:
        errno, why = refused
        call = f"madvise(MADV_{str(advice).upper()})" if advice else "fallocate(PUNCH_HOLE)"
        verdict = "is not modelled" if errno == discard.NOT_MODELLED else f"fails with {errno}"
        r.fail(
            _join(path, "advice" if advice else "vma"),
            f"{call} on vma {vma.name!r} ({'shared ' if vma.shared else ''}{vma.backing}) "
            f"{verdict}: {why}",
        )


def _reset_params(
    r: _Reader, path: str, params: Mapping[str, object], device_kinds: Mapping[str, DeviceKind]
) -> None:
    """Check a device_reset step's device-specific keys, if the device says which."""
    schema = device_kinds.get(str(params["device"]))
    if schema is None:
        return
    allowed = {"device", *schema.reset_fields}
    for key, value in params.items():
        if key not in allowed:
            r.fail(
                f"{path}.{_keyname(key)}",
                f"unknown key {key!r} for a 'device_reset' of {schema.name!r}"
                f"{_did_you_mean(key, allowed)}",
                _one_of(allowed | {"do", "at", "expect"}),
            )
        if key != "device" and not _is_type(value, schema.reset_fields[key]):
            r.fail(
                f"{path}.{_keyname(key)}", "wrong type", _type_name(schema.reset_fields[key]), value
            )


# Keys with a core meaning: never swallowed into params by a kind's `extra`,
# so `vcpu = 1` on a device_reset step is an error, not a silent param.
_ALL_STEP_KEYS: Final = frozenset({"do", "at", "expect", "actor", *CORE_STEP_KEYS})


def _expect(r: _Reader, path: str, value: object, do: str, allowed: tuple[str, ...]) -> Expect:
    t = r.table(path, value)
    for key in t:
        if key not in EXPECT_KEYS:
            r.fail(
                f"{path}.{_keyname(key)}",
                f"unknown key {key!r}{_did_you_mean(key, EXPECT_KEYS)}",
                _one_of(EXPECT_KEYS),
            )
        if key not in allowed:
            why = ": it is not a guest access" if key in ACCESS_EXPECT_KEYS else ""
            r.fail(f"{path}.{key}", f"{_a(do)} cannot expect {key!r}{why}", _one_of(allowed))

    outcome = (
        r.enum(f"{path}.outcome", t["outcome"], r.outcomes, "outcome") if "outcome" in t else None
    )
    writable = r.bool_(f"{path}.writable", t["writable"]) if "writable" in t else None
    frame: str | int | None = None
    if "frame" in t:
        raw = t["frame"]
        if isinstance(raw, str):
            frame = r.enum(f"{path}.frame", raw, FRAME_WORDS, "frame")
        elif isinstance(raw, int) and not isinstance(raw, bool):
            frame = r.int_(f"{path}.frame", raw)
        else:
            r.fail(f"{path}.frame", "wrong type", "'host', 'none' or a pfn (integer)", raw)
    page_size = r.size(f"{path}.page_size", t["page_size"]) if "page_size" in t else None
    young = r.bool_(f"{path}.young", t["young"]) if "young" in t else None
    value = None
    if "value" in t:
        value = r.int_(f"{path}.value", t["value"])
        if value > MAX_VALUE:
            r.fail(f"{path}.value", "wider than a load", "an integer below 2**64", value)
    uffd_faults = r.int_(f"{path}.uffd_faults", t["uffd_faults"]) if "uffd_faults" in t else None
    verdicts = None
    if "verdicts" in t:
        raw_list = t["verdicts"]
        if not isinstance(raw_list, list):
            r.fail(
                f"{path}.verdicts",
                "wrong type",
                f"an array of verdict names, {_one_of(VERDICTS)}",
                raw_list,
            )
        verdicts = tuple(
            r.enum(f"{path}.verdicts[{j}]", v, VERDICTS, "verdict") for j, v in enumerate(raw_list)
        )
        for j, v in enumerate(verdicts):
            if v in verdicts[:j]:
                r.fail(f"{path}.verdicts[{j}]", "verdict listed twice", "each verdict once", v)

    if value is not None and outcome is not None and outcome not in ("mapped", "mmio"):
        r.fail(
            f"{path}.value",
            f"an access with outcome {outcome!r} returns no value",
            "no value unless outcome = 'mapped' or 'mmio'",
        )
    # Only a mapped access leaves a stage-2 entry to describe.
    if outcome is not None and outcome != "mapped":
        for key in ("writable", "page_size"):
            if key in t:
                r.fail(
                    f"{path}.{key}",
                    f"an access with outcome {outcome!r} maps nothing",
                    f"no {key} unless outcome = 'mapped'",
                )
        if frame is not None and frame != "none":
            r.fail(
                f"{path}.frame",
                f"an access with outcome {outcome!r} maps nothing",
                "frame = 'none' or no frame unless outcome = 'mapped'",
                frame,
            )
    if outcome == "mapped" and frame == "none":
        r.fail(
            f"{path}.frame",
            "a mapped access maps a frame",
            "'host' or a pfn with outcome 'mapped'",
            frame,
        )
    return Expect(outcome, writable, frame, page_size, verdicts, value, young, uffd_faults)
