"""The ``dirty_log`` scenario step (a core host step on every arch with
dirty logging) and the scenario's ``[dirty]`` choice of mechanism.

``action``:

- ``enable`` / ``disable``: ``KVM_SET_USER_MEMORY_REGION`` setting or
  clearing ``KVM_MEM_LOG_DIRTY_PAGES`` on memslot ``slot``;
- ``get``: ``KVM_GET_DIRTY_LOG`` (without manual protect it clears what it
  returns and re-arms those pages; with it, it only reads the bitmap);
- ``clear``: ``KVM_CLEAR_DIRTY_LOG`` of pages ``[first, first + num)``
  (default: the whole slot) with the bitmap the slot's last ``get``
  returned, as QEMU passes it;
- ``reap``: collect every vcpu's dirty ring and ``KVM_RESET_DIRTY_RINGS``
  (no ``slot``).

``expect_dirty`` (``get``, ``reap``) lists the gpas a correct kernel
reports; another report fails the step's expectation.  Every harvest is
also judged by the ``lost_dirty`` checker against the guest stores the
core recorded (:mod:`kvmsim.kvm.ledger`).

The mechanism is the scenario's (``[dirty]``: ``mode``, ``manual_protect``,
``initially_set``, ``ring_size``), checked against what the arch's handler
version has (the ``dirty_log_caps`` hook); ``pml = true`` on an ``enable``
step is the older spelling of ``mode = "pml"``.  What the kernel would
refuse (a slot that does not log, a ``clear`` past the slot, a ring ioctl
without rings, a mode the version lacks) is a scenario error naming the
step and key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final, cast

from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import DirtyCaps, StepResult
from kvmsim.kvm import dirty as kd
from kvmsim.scenario.model import DIRTY_MODES, DirtySpec, StepKind

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.scenario.model import Scenario, StepSpec

DIRTY_LOG_STEP: Final = StepKind(
    "dirty_log",
    {
        "slot": int,
        "action": str,
        "expect_dirty": list,
        "pml": bool,
        "first": int,
        "num": int,
    },
    required=("action",),
)
DIRTY_ACTIONS: Final = ("enable", "get", "clear", "disable", "reap")
DIRTY_KEYS: Final = ("mode", "manual_protect", "initially_set", "ring_size")
"""The keys of the ``[dirty]`` table."""
CLEAR_ALIGN: Final = 64
"""``KVM_CLEAR_DIRTY_LOG``: ``first_page`` and ``num_pages`` in whole
bitmap words (``num_pages`` may end at the slot's end instead)."""

Fail = Callable[[str, str, str | None, object], None]


# ------------------------------------------------------------ load-time checks


def step_problem(params: Mapping[str, object], slots: int) -> tuple[str, str, str, object] | None:
    """What is wrong with a ``dirty_log`` step's own keys, whatever the arch:
    (key, message, expected, got), or None.  ``slots``: memslots in the file."""
    action = params.get("action")
    if action not in DIRTY_ACTIONS:
        return ("action", "unknown dirty_log action", ", ".join(DIRTY_ACTIONS), action)
    if action == "reap":
        if "slot" in params:
            return ("slot", "a reap collects every ring, of every slot", "no slot", params["slot"])
    else:
        if "slot" not in params:
            return ("slot", f"missing required key for action {action!r}", "a memslot index", None)
        sid = params["slot"]
        if not isinstance(sid, int) or not 0 <= sid < slots:
            return (
                "slot",
                "no memslot with this index (memslots are numbered in file order from 0)",
                f"0 to {slots - 1}" if slots else "a [[memslot]] first",
                sid,
            )
    for key in ("first", "num"):
        if key in params and action != "clear":
            return (key, f"{key} belongs to action 'clear'", f"no {key}", params[key])
    first = params.get("first", 0)
    if isinstance(first, int) and first % CLEAR_ALIGN:
        return ("first", "KVM_CLEAR_DIRTY_LOG wants whole bitmap words", "a multiple of 64", first)
    if params.get("num") is not None and cast(int, params["num"]) < 0:
        return ("num", "must not be negative", "a page count", params["num"])
    if "pml" in params and action != "enable":
        return ("pml", "pml is chosen when logging is enabled", "pml only on 'enable'", None)
    if "expect_dirty" in params:
        if action not in ("get", "reap"):
            return ("expect_dirty", f"a {action!r} reports no pages", "get or reap", action)
        items = cast(list[object], params["expect_dirty"])
        if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in items):
            return (
                "expect_dirty",
                "wrong type",
                "an array of guest physical addresses (integers)",
                params["expect_dirty"],
            )
    return None


def dirty_spec(table: Mapping[str, object], fail: Fail) -> DirtySpec:
    """The ``[dirty]`` table's values, type-checked (``fail(key, message,
    expected, got)`` raises)."""
    mode = table.get("mode")
    if mode is not None and mode not in DIRTY_MODES:
        fail("dirty.mode", "unknown dirty-logging mode", ", ".join(DIRTY_MODES), mode)
    for key in ("manual_protect", "initially_set"):
        if key in table and not isinstance(table[key], bool):
            fail(f"dirty.{key}", "wrong type", "true or false", table[key])
    manual = bool(table.get("manual_protect", False))
    initially = bool(table.get("initially_set", False))
    if initially and not manual:
        fail(
            "dirty.initially_set",
            "KVM_DIRTY_LOG_INITIALLY_SET is a flag of KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
            "manual_protect = true with it",
            True,
        )
    ring = table.get("ring_size")
    if ring is not None:
        if isinstance(ring, bool) or not isinstance(ring, int):
            fail("dirty.ring_size", "wrong type", "a number of ring entries", ring)
        assert isinstance(ring, int)
        if mode != "ring":
            fail("dirty.ring_size", "a ring size needs the ring", 'mode = "ring"', ring)
        if ring <= 0 or ring & (ring - 1) or ring > kd.KVM_DIRTY_RING_MAX_ENTRIES:
            fail(
                "dirty.ring_size",
                "KVM_CAP_DIRTY_LOG_RING wants a power of two",
                f"a power of two up to {kd.KVM_DIRTY_RING_MAX_ENTRIES}",
                ring,
            )
    if mode == "ring" and manual:
        fail(
            "dirty.manual_protect",
            "the dirty ring replaces the bitmap: KVM_CLEAR_DIRTY_LOG returns -ENXIO with it",
            "no manual_protect with mode = 'ring'",
            True,
        )
    return DirtySpec(
        mode=cast("str | None", mode),
        manual_protect=manual,
        initially_set=initially,
        ring_size=cast("int | None", ring),
    )


# ------------------------------------------------------------------ set-up


def _missing(caps: DirtyCaps, what: str, arch: str) -> str:
    return caps.missing.get(what) or f"{arch} has no {what} in this handler version"


def dirty_unsupported(spec: DirtySpec, caps: DirtyCaps | None, arch: str) -> str | None:
    """Why a VM with ``caps`` cannot be given ``spec`` (the first feature
    it lacks), or None."""
    if caps is None:
        return f"{arch} has no dirty logging"
    if spec.mode is not None and spec.mode not in caps.modes:
        return _missing(caps, spec.mode, arch)
    if spec.manual_protect and not caps.manual_protect:
        return _missing(caps, "manual_protect", arch)
    if spec.initially_set and not caps.initially_set:
        return _missing(caps, "initially_set", arch)
    return None


def configure(kvm: Kvm, scenario: Scenario) -> None:
    """Give the VM the scenario's dirty-logging set-up, refused where the
    arch's version lacks it (``KVM_ENABLE_CAP`` failing)."""
    spec = scenario.dirty
    uses = any(s.do == "dirty_log" for s in scenario.steps)
    caps = kvm.hooks.hook.dirty_log_caps(kvm=kvm)
    src = scenario.source
    arch = kvm.arch_name
    if caps is None:
        if uses or spec != DirtySpec():
            first = next((s.index for s in scenario.steps if s.do == "dirty_log"), None)
            key = "dirty" if first is None else f"step[{first}].do"
            raise ScenarioError(f"{arch} has no dirty logging", file=src, key=key)
        return
    if not isinstance(caps, DirtyCaps) or not caps.modes:
        raise kvm.hooks.bad_result("dirty_log_caps", caps)
    d = kvm.dirty
    d.caps = caps
    d.mode = spec.mode or caps.default
    pml_steps = [s for s in scenario.steps if s.do == "dirty_log" and s.params.get("pml")]
    if pml_steps:
        where = f"step[{pml_steps[0].index}].pml"
        if spec.mode not in (None, "pml"):
            raise ScenarioError(
                f"pml contradicts [dirty] mode = {spec.mode!r}", file=src, key=where
            )
        if "pml" not in caps.modes:
            raise ScenarioError(_missing(caps, "pml", arch), file=src, key=where)
    if d.mode not in caps.modes:
        raise ScenarioError(
            _missing(caps, d.mode, arch),
            file=src,
            key="dirty.mode",
            expected=", ".join(caps.modes),
            got=d.mode,
        )
    for what, on, ok in (
        ("manual_protect", spec.manual_protect, caps.manual_protect),
        ("initially_set", spec.initially_set, caps.initially_set),
    ):
        if on and not ok:
            raise ScenarioError(_missing(caps, what, arch), file=src, key=f"dirty.{what}")
    d.manual_protect = spec.manual_protect
    d.initially_set = spec.initially_set
    if d.mode == "ring":
        size = spec.ring_size or kd.DEFAULT_RING_SIZE
        # kvm_vm_ioctl_enable_dirty_log_ring: at least a page, and room for
        # the reserved entries
        least = max(
            kd.KVM_DIRTY_RING_RSVD_ENTRIES + 1, (1 << kvm.page_shift) // kd.KVM_DIRTY_GFN_SIZE
        )
        if size < least:
            raise ScenarioError(
                "KVM_CAP_DIRTY_LOG_RING refuses a ring smaller than a page",
                file=src,
                key="dirty.ring_size",
                expected=f"at least {least} entries",
                got=size,
            )
        d.ring_size = size


# ------------------------------------------------------------------ the step


def run_step(kvm: Kvm, step: StepSpec, source: str = "") -> StepResult:
    """Run one ``dirty_log`` step (the checks the loader could not make
    first: they need the arch, the slot's size and what logs now)."""
    d = kvm.dirty
    action = str(step.params["action"])
    key = f"step[{step.index}]"

    def err(k: str, message: str, expected: str | None = None, got: object = None) -> ScenarioError:
        return ScenarioError(message, file=source, key=f"{key}.{k}", expected=expected, got=got)

    if not d.mode:
        raise err("do", f"{kvm.arch_name} has no dirty logging")
    d.step = step.index
    if action == "reap":
        if not d.ring_size:
            raise err(
                "action",
                "no dirty ring to reap (KVM_RESET_DIRTY_RINGS returns -ENXIO)",
                "[dirty] mode = 'ring'",
                action,
            )
        got = kd.reap_dirty_rings(kvm)
        gpas: list[int] = []
        for sid, rels in got.items():
            slot = kvm.memslots.by_id(sid)
            base = 0 if slot is None else slot.base_gfn
            gpas.extend((base + r) << kvm.page_shift for r in rels)
            d.reports.append((step.index, sid, tuple((base + r) << kvm.page_shift for r in rels)))
        return result(step, tuple(sorted(gpas)))
    slot = kvm.memslots.by_id(cast(int, step.params["slot"]))
    if slot is None:  # the loader checked the index against the file
        raise err("slot", "no memslot with this id")
    if action == "enable":
        if step.params.get("pml"):
            d.mode = "pml"
        kd.set_logging(kvm, slot, True)
        return StepResult(outcome="done")
    if not d.logging(slot.id):
        raise err(
            "slot",
            f"dirty logging is not enabled on memslot {slot.id} (a {action!r} there "
            "returns -ENOENT); enable it first",
        )
    if action == "disable":
        kd.set_logging(kvm, slot, False)
        return StepResult(outcome="done")
    if d.ring_size:
        raise err(
            "action",
            f"with the dirty ring there is no bitmap: KVM_{action.upper()}_DIRTY_LOG "
            "returns -ENXIO",
            "reap",
            action,
        )
    if action == "get":
        rels = kd.get_dirty_log(kvm, slot)
        gpas_t = tuple((slot.base_gfn + r) << kvm.page_shift for r in rels)
        d.reports.append((step.index, slot.id, gpas_t))
        d.last_get[slot.id] = set(rels)
        return result(step, gpas_t)
    # clear
    caps = d.caps
    if not isinstance(caps, DirtyCaps) or not caps.manual_protect:
        why = "no KVM_CLEAR_DIRTY_LOG"
        if isinstance(caps, DirtyCaps):
            why = _missing(caps, "manual_protect", kvm.arch_name)
        raise err("action", why, "get", action)
    first = cast(int, step.params.get("first", 0))
    num = cast(int, step.params.get("num", slot.npages - first))
    if first > slot.npages or num > slot.npages - first:
        k = "first" if first > slot.npages else "num"
        raise err(
            k,
            f"pages [{first}, {first + num}) run past memslot {slot.id} "
            f"({slot.npages} pages): KVM_CLEAR_DIRTY_LOG returns -EINVAL",
            f"first + num <= {slot.npages}",
            step.params.get(k),
        )
    if num < slot.npages - first and num % CLEAR_ALIGN:
        raise err(
            "num",
            "KVM_CLEAR_DIRTY_LOG wants whole bitmap words unless the range ends the slot",
            "a multiple of 64, or up to the slot's end",
            num,
        )
    passed = d.last_get.get(slot.id, set())
    n = kd.clear_dirty_log(kvm, slot, first, num, passed)
    return StepResult(outcome="done", detail=f"{n} page(s) cleared")


def result(step: StepSpec, gpas: tuple[int, ...]) -> StepResult:
    """The result of a harvest that reported ``gpas`` (sorted), failing the
    step's expectation when ``expect_dirty`` names other gpas."""
    want = step.params.get("expect_dirty")
    got_s = [hex(g) for g in gpas]
    if want is not None:
        expected = tuple(sorted(cast(Iterable[int], want)))
        if expected != gpas:
            return StepResult(
                outcome="done",
                detail=f"dirty gpas {got_s}",
                expect_failures=(
                    f"expect_dirty: expected {[hex(g) for g in expected]}, got {got_s}",
                ),
            )
    return StepResult(outcome="done", detail=f"dirty gpas {got_s}")
