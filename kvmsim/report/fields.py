"""Trace field values as people read them: addresses, pfns and flags in hex,
``vm_flags``, gup flags, fault flags and ``VM_FAULT_*`` results decoded into
names, sizes with units.

Trace events keep plain integers (the JSON Lines and Chrome exports are for
programs and stay as they were); this is the presentation layer that
``kvmsim diff``, the HTML report and ``kvmsim run`` share, so one value is
spelt one way wherever a person sees it.  The flag names come from
:mod:`kvmsim.host.constants` by prefix, so a flag added there is decoded
here without a second list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kvmsim.host import constants as _c
from kvmsim.scenario.sizes import format_size


def _bits(
    prefix: str, *, exclude: tuple[str, ...] = (), extra: Mapping[str, int] | None = None
) -> tuple[tuple[str, int], ...]:
    found = {
        name: value
        for name, value in vars(_c).items()
        if name.startswith(prefix)
        and not any(name.startswith(x) for x in exclude)
        and isinstance(value, int)
        and value > 0
        and value & (value - 1) == 0  # single bits only (not VM_FAULT_ERROR)
    }
    found.update(extra or {})
    return tuple(sorted(found.items(), key=lambda kv: kv[1]))


def _gup_internal() -> dict[str, int]:
    # FOLL_NUMA / FOLL_COW are private to the gup model
    from kvmsim.host import gup

    return {n: v for n, v in vars(gup).items() if n.startswith("FOLL_") and isinstance(v, int)}


VM_FLAGS: Final = _bits("VM_", exclude=("VM_FAULT_",))
FOLL_FLAGS: Final = _bits("FOLL_", extra=_gup_internal())
FAULT_FLAGS: Final = _bits("FAULT_FLAG_")
VM_FAULT_BITS: Final = _bits("VM_FAULT_")


def decode_flags(value: int, table: tuple[tuple[str, int], ...]) -> str:
    """``VM_READ|VM_WRITE|0x80000000``: the named bits, then any unnamed
    rest in hex; ``0`` for no bit."""
    names = [name for name, bit in table if value & bit]
    rest = value & ~sum(bit for _, bit in table if value & bit)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


#: Keys whose integer value is an address, a frame number, an offset in
#: pages or an encoded entry: shown in hex.
HEX_KEYS: Final = frozenset(
    {
        "addr",
        "address",
        "start",
        "end",
        "hva",
        "haddr",
        "gpa",
        "ea",
        "gfn",
        "pfn",
        "old_pfn",
        "new_pfn",
        "pte",
        "pgoff",
        "vm_pgoff",
        "page_prot",
        "vm_page_prot",
        "code",
        "offset",
    }
)

#: A return value this large is a register image (an HPT fault's DSISR),
#: never a count or an errno.
_IMAGE_MIN: Final = 1 << 16

#: Keys whose integer value is a size in bytes.
SIZE_KEYS: Final = frozenset(
    {"size", "pte_size", "psize", "host_pte_size", "page_size", "map_size"}
)

#: Flag keys decoded the same way in every event.
_FLAG_KEYS: Final = {
    "vm_flags": VM_FLAGS,
    "gup_flags": FOLL_FLAGS,
    "fault_flags": FAULT_FLAGS,
}

#: ``flags`` / ``result`` / ``fault`` mean different things per event.
_EVENT_FLAGS: Final = {
    ("get_user_pages", "flags"): FOLL_FLAGS,
    ("get_user_pages_unlocked", "flags"): FOLL_FLAGS,
    ("get_user_pages_locked", "flags"): FOLL_FLAGS,
    ("handle_mm_fault", "flags"): FAULT_FLAGS,
    ("hugetlb_fault", "flags"): FAULT_FLAGS,
    ("handle_mm_fault", "result"): VM_FAULT_BITS,
    ("hugetlb_fault", "result"): VM_FAULT_BITS,
    ("faultin_page", "fault"): VM_FAULT_BITS,
}


def format_value(event: str | None, key: str, value: Any) -> str:
    """One field's value as shown to a person (non-integers as ``str``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    table = _EVENT_FLAGS.get((event or "", key)) or _FLAG_KEYS.get(key)
    if table is not None:
        return decode_flags(value, table)
    if key in SIZE_KEYS and value > 0:
        return format_size(value)
    if key in HEX_KEYS and value >= 0:
        return hex(value)
    if key == "ret" and value >= _IMAGE_MIN:
        return hex(value)
    return str(value)


def format_fields(event: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``k=v`` for every field of *event* not in *skip*, sorted by key."""
    name = event.get("event")
    return " ".join(
        f"{k}={format_value(name, k, v)}" for k, v in sorted(event.items()) if k not in skip
    )
