"""C hazards made explicit.

The strategies kvmsim models are C code whose bugs are uninitialised locals,
NULL dereferences and error pointers mistaken for pages.  Python would hide
those; this module makes each one a value the model can carry and a check
that fails the way the kernel would: by raising :class:`KernelOops`, which the
runner records as the outcome ``oops`` (kvmsim itself never crashes).

Pointers to ``struct page`` are modelled as the page's pfn (an ``int``), or
:data:`NULL`, :data:`UNINIT`, or an :class:`ErrPtr`.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from attrs import frozen

# errno values (include/uapi/asm-generic/errno-base.h, errno.h, linux/errno.h)
ENOENT: Final = 2
EINTR: Final = 4
EAGAIN: Final = 11
ENOMEM: Final = 12
EFAULT: Final = 14
EBUSY: Final = 16
EEXIST: Final = 17
EINVAL: Final = 22
EHWPOISON: Final = 133
ERESTARTSYS: Final = 512

ERRNO_NAMES: Final = {
    ENOENT: "ENOENT",
    EINTR: "EINTR",
    EAGAIN: "EAGAIN",
    ENOMEM: "ENOMEM",
    EFAULT: "EFAULT",
    EBUSY: "EBUSY",
    EEXIST: "EEXIST",
    EINVAL: "EINVAL",
    EHWPOISON: "EHWPOISON",
    ERESTARTSYS: "ERESTARTSYS",
}

MAX_ERRNO: Final = 4095


def errno_name(err: int) -> str:
    """``-14`` → ``"-EFAULT"``; other integers as they are."""
    name = ERRNO_NAMES.get(-err)
    return f"-{name}" if name else str(err)


class KernelOops(Exception):
    """The simulated kernel oopsed: a NULL dereference, a use of an
    uninitialised value, a BUG_ON.

    :param what: what was done, in the kernel's words
        (``"page_to_pfn(NULL)"``, ``"IS_ERR(page[0]) on an uninitialised local"``).
    :param kind: ``null_deref``, ``uninit_use`` or ``bug``.
    """

    def __init__(self, what: str, kind: str) -> None:
        super().__init__(f"{kind}: {what}")
        self.what = what
        self.kind = kind


class _Null:
    """The C NULL pointer (singleton :data:`NULL`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL"

    def __bool__(self) -> bool:
        return False


class _Uninit:
    """An uninitialised local (singleton :data:`UNINIT`).

    Any use of it as a value oopses: truth testing, comparison, arithmetic.
    The model must use :func:`use` or the helpers below to touch a value that
    may be uninitialised; the dunders are a safety net.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNINIT"

    def _oops(self, *_: object) -> bool:
        raise KernelOops("use of an uninitialised local", "uninit_use")

    __bool__ = _oops
    __eq__ = _oops  # type: ignore[assignment]
    __lt__ = _oops
    __int__ = _oops  # type: ignore[assignment]
    __index__ = _oops  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]


NULL: Final = _Null()
UNINIT: Final = _Uninit()


@frozen
class ErrPtr:
    """``ERR_PTR(err)``: an errno encoded in a pointer (``err`` is negative)."""

    err: int

    def __repr__(self) -> str:
        return f"ERR_PTR({errno_name(self.err)})"


PagePtr: TypeAlias = "int | _Null | _Uninit | ErrPtr"
"""A ``struct page *``: a pfn, NULL, an uninitialised value or an error pointer."""


def use(value: object, what: str) -> object:
    """Read ``value``; oops if it is :data:`UNINIT`.  ``what`` names the use."""
    if value is UNINIT:
        raise KernelOops(f"{what}: use of an uninitialised value", "uninit_use")
    return value


def ERR_PTR(err: int) -> ErrPtr:
    """``ERR_PTR(err)``; ``err`` must be a negative errno."""
    return ErrPtr(err)


def IS_ERR(ptr: object, what: str = "IS_ERR") -> bool:
    """``IS_ERR(ptr)``: true only for error pointers.  NULL is *not* an error.

    Oopses when ``ptr`` is uninitialised: the kernel would compare garbage.
    """
    if ptr is UNINIT:
        raise KernelOops(f"{what} on an uninitialised pointer", "uninit_use")
    return isinstance(ptr, ErrPtr)


def PTR_ERR(ptr: object, what: str = "PTR_ERR") -> int:
    """``PTR_ERR(ptr)``: the errno of an error pointer; 0 for NULL; for a real
    pointer, a meaningless non-errno value (we return 0 and callers compare
    it against errnos, as C code does)."""
    if ptr is UNINIT:
        raise KernelOops(f"{what} on an uninitialised pointer", "uninit_use")
    if isinstance(ptr, ErrPtr):
        return ptr.err
    return 0


def deref(ptr: object, what: str) -> int:
    """Dereference a page pointer: oops on NULL, UNINIT or an error pointer.

    ``what`` is the expression in kernel terms, e.g. ``"page_to_pfn(page)"``.
    Returns the pfn the pointer designates.
    """
    if ptr is NULL:
        raise KernelOops(f"{what}: NULL pointer dereference", "null_deref")
    if ptr is UNINIT:
        raise KernelOops(f"{what}: use of an uninitialised pointer", "uninit_use")
    if isinstance(ptr, ErrPtr):
        raise KernelOops(f"{what}: dereference of {ptr!r}", "null_deref")
    assert isinstance(ptr, int)
    return ptr


def BUG_ON(cond: bool, what: str) -> None:
    """``BUG_ON(cond)``: oops when ``cond`` holds."""
    if cond:
        raise KernelOops(what, "bug")


class OutParam:
    """A C out-parameter ``T *p``: either a real location or NULL.

    ``OutParam.null()`` models passing NULL; writing through it oopses, as an
    unguarded ``*p = x`` does.  Reading an unwritten location gives UNINIT.
    """

    __slots__ = ("is_null", "name", "value")

    def __init__(self, name: str, value: object = UNINIT, *, is_null: bool = False) -> None:
        self.name = name
        self.value = value
        self.is_null = is_null

    @classmethod
    def null(cls, name: str) -> OutParam:
        return cls(name, NULL, is_null=True)

    def __bool__(self) -> bool:
        """``if (p)``: true when the pointer is not NULL."""
        return not self.is_null

    def set(self, value: object) -> None:
        """``*p = value``; oops when ``p`` is NULL."""
        if self.is_null:
            raise KernelOops(f"*{self.name} = ...: NULL pointer dereference", "null_deref")
        self.value = value

    def get(self) -> object:
        """``*p``; oops when ``p`` is NULL."""
        if self.is_null:
            raise KernelOops(f"*{self.name}: NULL pointer dereference", "null_deref")
        return self.value
