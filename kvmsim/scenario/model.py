"""The scenario schema as frozen values.

A :class:`Scenario` is what :func:`kvmsim.scenario.load_scenario` returns:
every default resolved, every size in bytes, every cross-reference checked,
so the simulator never re-validates what a user wrote.  All classes are
frozen and hashable (TOML arrays become tuples, tables become
:class:`Params`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from types import MappingProxyType
from typing import Final, TypeAlias

from attrs import field, frozen

from kvmsim.points import LEGACY_POINTS, PLACEMENTS, POINTS

#: Points in the fault path where a step's host event can be made to fire,
#: inside the next guest access's fault (step key ``at``).
# The first three are the original placements, then across_create_pte (a
# placement only: the event's invalidate_range_start and page-table change
# before the retry check under mmu_lock, its invalidate_range_end after the
# fault returned), then every other yield point (kvmsim.points).
RACE_POINTS: Final = (
    *LEGACY_POINTS,
    *PLACEMENTS,
    *(p for p in POINTS if p not in LEGACY_POINTS),
)

#: What a guest access may end in (``expect.outcome``).
OUTCOMES: Final = (
    "mapped",
    "mmio",
    "efault",
    "sigbus",
    "oops",
    "livelock",
    "deadlock",
    "guest_fault",
)

#: Checker verdict names (``expect.verdicts``).
VERDICTS: Final = (
    "wrong_frame",
    "stale_mapping",
    "refcount_leak",
    "refcount_underflow",
    "lock_leak",
    "deadlock",
    "oops",
    "livelock",
    "write_to_readonly",
    "poison_mapped",
    "cache_attr_mismatch",
    "outside_memslot",
    "lost_dirty",
    "dirty_log_overflow",
)

#: vma ``backing`` values.
BACKINGS: Final = (
    "anon",
    "shmem",
    "file",
    "hugetlbfs",
    "pfnmap_linear",
    "pfnmap_fault",
    "mixedmap",
    "device",
)

#: Backings whose frames are described by ``pfn_kind``.
PFN_BACKINGS: Final = ("pfnmap_linear", "pfnmap_fault", "mixedmap")

#: vma ``prot`` values (and mprotect steps' ``prot``); ``none`` is PROT_NONE.
PROTS: Final = ("r", "rw", "rx", "rwx", "none")

#: What a ``host_write`` step stores at its address when it names no
#: ``value`` (a marker a guest load can recognise: ASCII "HOSTMARK").
HOST_WRITE_VALUE: Final = 0x4B52414D54534F48

#: Kinds of frame behind a pfnmap/mixedmap vma (``pfn_kind``).
PFN_KINDS: Final = ("mmio", "ram", "ram_unrefcounted")

#: Dirty-logging mechanisms (``[dirty] mode``): write protection, Intel PML,
#: hardware dirty (change) bits harvested at ``get``, the dirty ring.
DIRTY_MODES: Final = ("wp", "pml", "dirty_bit", "ring")
#: ``madvise`` steps' ``advice``: MADV_DONTNEED, MADV_REMOVE, MADV_FREE.
ADVICES: Final = ("dontneed", "remove", "free")

#: Guest access kinds (``op``).
OPS: Final = ("read", "write", "exec")

#: ``expect.frame`` words; an ``int`` there is an exact pfn.
FRAME_WORDS: Final = ("host", "none")

#: The ``expect`` keys of a guest access (a step kind that faults).
ACCESS_EXPECT_KEYS: Final = (
    "outcome",
    "writable",
    "frame",
    "page_size",
    "verdicts",
    "value",
    "uffd_faults",
)

#: The keys of an ``expect`` table (``young``: an ``age`` step's answer).
EXPECT_KEYS: Final = (*ACCESS_EXPECT_KEYS, "young")

#: An ``age`` step's ``young``: ``clear_young`` or ``test_young``.
YOUNG_MODES: Final = ("clear", "test")

#: ``[[uffd]]`` ``mode`` values (UFFDIO_REGISTER_MODE_MISSING / _MINOR).
UFFD_MODES: Final = ("missing", "minor")

#: The largest ``expect.value`` (a load is at most 8 bytes wide).
MAX_VALUE: Final = 2**64 - 1

#: Step keys the loader itself validates and stores in :class:`StepSpec`
#: attributes.  A :class:`StepKind` may list any of them in ``fields``.
#: (``do``, ``at`` and ``expect`` are governed by the kind's flags instead.)
CORE_STEP_KEYS: Final = ("vcpu", "gpa", "op", "vma", "offset", "size", "prot")

#: What a plugin gives as the type of one of its keys (for ``isinstance``).
FieldType: TypeAlias = type | tuple[type, ...]


def _freeze(value: object) -> object:
    """Make a TOML value hashable: arrays become tuples, tables :class:`Params`."""
    if isinstance(value, Params):
        return value
    if isinstance(value, Mapping):
        return Params.of(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# eq=False: equality and hashing come from the Mapping protocol below, so a
# Params compares equal to a plain dict with the same items.
@frozen(eq=False)
class Params(Mapping[str, object]):
    """An immutable, hashable mapping of extra (plugin-defined) keys.

    Build it with :meth:`of`; read it like a dict (``params["source"]``,
    ``params.get("source", 0)``).  Nested arrays are tuples and nested tables
    are :class:`Params`.
    """

    # Sorted by key, so equal mappings have equal items and equal hashes.
    items_: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, mapping: Mapping[str, object] | None = None) -> Params:
        """Freeze *mapping* (recursively) into a :class:`Params`."""
        if not mapping:
            return cls()
        return cls(tuple(sorted((str(k), _freeze(v)) for k, v in mapping.items())))

    def __getitem__(self, key: str) -> object:
        for k, v in self.items_:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.items_)

    def __len__(self) -> int:
        return len(self.items_)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Params):
            return self.items_ == other.items_
        if isinstance(other, Mapping):
            return dict(self.items_) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.items_)

    def __repr__(self) -> str:
        return f"Params({dict(self.items_)!r})"


def _to_params(value: Mapping[str, object] | None) -> Params:
    """attrs converter: any mapping to :class:`Params`."""
    return Params.of(value)


@frozen
class VmaSpec:
    """One host mapping of the VMM process (``[[vma]]``)."""

    name: str
    size: int  # bytes
    backing: str  # one of BACKINGS
    prot: str = "rw"  # one of PROTS
    shared: bool = False  # MAP_SHARED
    huge: int = 0  # hugetlbfs page size, or THP size on anon/shmem; 0 = none
    populate: bool = False  # MAP_POPULATE
    device: str | None = None  # backing "device": the device kind that faults it
    pgoff: int = 0  # mmap offset, in pages
    pfn_kind: str | None = None  # PFN_BACKINGS only: one of PFN_KINDS
    fault_retry: int = 0  # pfnmap_fault: VM_FAULT_RETRY this many times first


@frozen
class MemslotSpec:
    """One KVM memslot (``[[memslot]]``): guest physical range → vma range."""

    index: int  # position in the file, used as the slot id
    gpa: int
    vma: str
    offset: int  # bytes into the vma
    size: int  # bytes, resolved (default: the rest of the vma)
    readonly: bool = False  # KVM_MEM_READONLY


@frozen
class DeviceSpec:
    """One emulated device (``[[device]]``); its own keys are in *params*."""

    kind: str
    params: Params = field(factory=Params, converter=_to_params)

    def get(self, key: str, default: object = None) -> object:
        """Return the device-specific *key*, or *default*."""
        return self.params.get(key, default)


@frozen
class Expect:
    """What a step expects (``expect = {...}``); ``None`` means "not checked".

    ``verdicts = []`` (an empty tuple) means "no checker may fire", which is
    different from leaving ``verdicts`` out.
    """

    outcome: str | None = None  # one of OUTCOMES
    writable: bool | None = None  # stage-2 entry writable
    frame: str | int | None = None  # "host", "none" or an exact pfn
    page_size: int | None = None  # stage-2 mapping size, bytes
    verdicts: tuple[str, ...] | None = None  # VERDICTS expected to fire
    value: int | None = None  # what a load returns (page contents or a device's reply)
    young: bool | None = None  # an age step: was anything in the range young
    uffd_faults: int | None = None  # userfaultfd messages the handler read so far


@frozen
class UffdSpec:
    """One userfaultfd registration (``[[uffd]]``): a vma range, MISSING or MINOR."""

    index: int  # position in the file
    vma: str
    offset: int  # bytes into the vma
    size: int  # bytes, resolved (default: the rest of the vma)
    mode: str = "missing"  # one of UFFD_MODES
    sigbus: bool = False  # UFFD_FEATURE_SIGBUS on the userfaultfd (UFFDIO_API)


@frozen
class StepSpec:
    """One step (``[[step]]``): a guest access or a host/device event.

    Keys specific to a step kind that have no attribute here (device_reset's
    ``device``, a plugin step's ``source``/``ea``/``count``...) are in
    *params*.  For steps that name a vma, *size* is resolved to bytes.
    """

    index: int  # position in the file
    do: str
    vcpu: int = 0
    gpa: int | None = None
    op: str | None = None  # one of OPS
    vma: str | None = None
    offset: int = 0  # bytes into the vma
    size: int | None = None  # bytes
    prot: str | None = None  # mprotect: one of PROTS
    at: str | None = None  # one of RACE_POINTS
    expect: Expect | None = None
    params: Params = field(factory=Params, converter=_to_params)
    actor: str | None = None  # a host step's actor in a concurrent scenario (default qemu)

    def actor_name(self, faults: bool) -> str:
        """The actor that runs this step in a concurrent scenario: an access
        (a step kind that faults) belongs to ``vcpu<N>``, a host step to
        ``qemu`` unless it names another."""
        if faults:
            return f"vcpu{self.vcpu}"
        return self.actor or "qemu"


@frozen
class Switch:
    """One entry of a concurrent scenario's ``[[schedule]]``: when ``actor``
    reaches point ``at`` for the ``nth`` time, ``run`` runs next (until it
    reaches a switch of its own, blocks or ends its step list)."""

    actor: str
    at: str
    run: str
    nth: int = 1


#: What a recorded known defect may say a step ended in
#: (``known.outcomes``): an access outcome, or a host event's ``done``,
#: ``armed`` (a race event waiting for the next fault) or ``none`` (not run,
#: because the kernel had already oopsed or deadlocked).
KNOWN_STEP_OUTCOMES: Final = (*OUTCOMES, "done", "armed", "none")


@frozen
class KnownDefect:
    """A strategy's recorded historical defect on this scenario (``[[known]]``).

    The scenario's expectations say what a correct kernel does; a strategy
    that reproduces an old kernel's bug fails them.  This record says how it
    fails, so the matrix can tell "wrong here, as the old kernel was" (kfail)
    from a simulator regression (fail).  A run matches the record when it
    did not pass, the set of checker verdicts it produced equals
    *verdicts*, every step in *outcomes* ended in that outcome, and every
    step in *failures* failed exactly those ``expect`` keys.
    """

    strategy: str
    arch: str | None  # None: on every arch the scenario runs on
    verdicts: tuple[str, ...]  # sorted, each in VERDICTS
    outcomes: tuple[tuple[int, str], ...] = ()  # (step index, KNOWN_STEP_OUTCOMES), sorted
    failures: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (step, sorted EXPECT_KEYS)
    reason: str = ""  # the kernel semantics it follows from

    def applies(self, strategy: str, arch: str) -> bool:
        """This record is about *strategy* on *arch*."""
        return self.strategy == strategy and (self.arch is None or self.arch == arch)


@frozen
class DirtySpec:
    """How the VM tracks dirty pages (``[dirty]``): what QEMU enables before
    it starts logging.  None or false: the arch version's default."""

    mode: str | None = None  # one of DIRTY_MODES
    manual_protect: bool = False  # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT(2)
    initially_set: bool = False  # KVM_DIRTY_LOG_INITIALLY_SET (with manual_protect)
    ring_size: int | None = None  # KVM_CAP_DIRTY_LOG_RING, in entries


@frozen
class Scenario:
    """A whole scenario file, validated."""

    name: str
    description: str
    arch: str | None
    vmas: tuple[VmaSpec, ...]
    memslots: tuple[MemslotSpec, ...]
    devices: tuple[DeviceSpec, ...]
    steps: tuple[StepSpec, ...]
    source: str  # the file name errors were (and would be) reported against
    known: tuple[KnownDefect, ...] = ()  # recorded defects of strategies, [[known]]
    concurrent: bool = False  # steps run as actors (kvmsim explore)
    schedule: tuple[Switch, ...] = ()  # the switches kvmsim run follows (concurrent only)
    dirty: DirtySpec = DirtySpec()  # dirty-logging set-up ([dirty])
    uffd: tuple[UffdSpec, ...] = ()  # userfaultfd registrations, [[uffd]]

    def known_for(self, strategy: str, arch: str) -> tuple[KnownDefect, ...]:
        """The recorded defects of *strategy* on *arch* (most specific first)."""
        found = [k for k in self.known if k.applies(strategy, arch)]
        return tuple(sorted(found, key=lambda k: k.arch is None))

    def vma(self, name: str) -> VmaSpec:
        """Return the vma called *name* (``KeyError`` if none)."""
        for v in self.vmas:
            if v.name == name:
                return v
        raise KeyError(name)

    def device(self, kind: str) -> DeviceSpec:
        """Return the device of *kind* (``KeyError`` if none)."""
        for d in self.devices:
            if d.kind == kind:
                return d
        raise KeyError(kind)


def _freeze_fields(fields: Mapping[str, FieldType]) -> Mapping[str, FieldType]:
    return MappingProxyType(dict(fields))


@frozen
class StepKind:
    """A kind of step (``do = "..."``), as the loader validates it.

    Plugins describe their extra step kinds with this and hand them to
    :func:`load_scenario` in ``step_kinds``; the core kinds are described the
    same way in :data:`CORE_STEP_KINDS`.

    :param name: the ``do`` value.
    :param fields: the keys the step may have (besides ``do``, ``at`` and
        ``expect``) and their types.  Names in :data:`CORE_STEP_KEYS` get the
        core validation (the type given is then not used) and land in the
        matching :class:`StepSpec` attribute; every other key is type-checked
        with ``isinstance`` (``bool`` never passes as ``int``) and lands in
        ``StepSpec.params``.  A key ``device`` (a string) must name a
        ``[[device]]`` of the scenario.
    :param required: the keys of *fields* that must be present.
    :param faults: the step is a guest access that goes through the fault
        path: it may not have ``at``, and pending ``at`` host events fire
        inside it.
    :param expect: the ``expect`` keys the step may have; ``None`` means
        those of a guest access (:data:`ACCESS_EXPECT_KEYS`) when *faults*,
        else only ``verdicts``; ``()`` forbids ``expect``.
    :param extra: the type(s) allowed for keys *not* in *fields* (they go to
        ``params``); ``None`` makes such keys errors.
    :param default_size: the size of a vma range step without ``size``;
        ``None`` means the rest of the vma from ``offset``.
    :param byte_offset: ``offset`` is the address of a load or store in the
        vma (any alignment; the kind checks it against the access width),
        not the page-aligned start of a range; the range (``size``) starts
        at the page holding it.
    """

    name: str
    fields: Mapping[str, FieldType] = field(factory=dict, converter=_freeze_fields, hash=False)
    required: tuple[str, ...] = ()
    faults: bool = False
    expect: tuple[str, ...] | None = None
    extra: FieldType | None = None
    default_size: int | None = None
    byte_offset: bool = False

    def expect_keys(self) -> tuple[str, ...]:
        """The ``expect`` keys this kind accepts."""
        if self.expect is not None:
            return self.expect
        return ACCESS_EXPECT_KEYS if self.faults else ("verdicts",)


@frozen
class DeviceKind:
    """A device plugin's scenario keys, so the loader can check them.

    Pass these (by kind) as ``devices`` to :func:`load_scenario`; when only
    device names are passed, a ``[[device]]`` table and a ``device_reset``
    step may carry any device-specific keys.

    :param name: the device kind (``[[device]] kind``).
    :param fields: the keys a ``[[device]]`` of this kind may have (besides
        ``kind``) and their types.
    :param required: the keys of *fields* that must be present.
    :param reset_fields: the keys (besides ``device``) a ``device_reset`` step
        naming this device may have, and their types.
    """

    name: str
    fields: Mapping[str, FieldType] = field(factory=dict, converter=_freeze_fields, hash=False)
    required: tuple[str, ...] = ()
    reset_fields: Mapping[str, FieldType] = field(
        factory=dict, converter=_freeze_fields, hash=False
    )


#: What :func:`~kvmsim.scenario.load_scenario` takes as ``devices``: the
#: device kinds available, by name, or described by :class:`DeviceKind`.
Devices: TypeAlias = Collection[str] | Mapping[str, DeviceKind]
