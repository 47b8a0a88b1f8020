"""What to tell a user when a plugin raised, or returned the wrong type:
which plugin, in which hook, at which step, and where in the plugin's own
code (``file:function:line``), in one line; ``--debug`` adds the traceback.

The hook and the plugin are found by matching the traceback's frames against
the code of every hook implementation registered in the run's plugin manager
(the innermost such frame is the hook that failed); the plugin's own frame is
the innermost frame below it that lies in the plugin's package.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import Any

from kvmsim.errors import HookResultError

__all__ = ["describe"]


def _impls(pm: Any) -> dict[CodeType, tuple[str, str, object]]:
    """Every hook implementation's code → (plugin name, hook name, plugin)."""
    out: dict[CodeType, tuple[str, str, object]] = {}
    for hook_name, caller in sorted(vars(pm.hook).items()):
        get = getattr(caller, "get_hookimpls", None)
        if get is None:
            continue
        for impl in get():
            code = getattr(impl.function, "__code__", None)
            if code is not None:
                out.setdefault(code, (str(pm.get_name(impl.plugin)), hook_name, impl.plugin))
    return out


def _roots(plugin: object) -> tuple[list[str], str]:
    """The files or directories of the plugin's top-level package, and the
    directory its frames are shown relative to."""
    modname = getattr(plugin, "__name__", None) if isinstance(plugin, ModuleType) else None
    modname = modname or type(plugin).__module__
    top = sys.modules.get(modname.split(".")[0])
    paths = list(getattr(top, "__path__", None) or ())
    if paths:
        return [os.path.join(p, "") for p in paths], str(Path(paths[0]).parent)
    file = getattr(top, "__file__", None)
    return ([file] if file else []), str(Path(file).parent) if file else ""


def _show(path: str, base: str, func: str, line: int) -> str:
    try:
        shown = os.path.relpath(path, base) if base else path
    except ValueError:  # pragma: no cover - another drive (Windows)
        shown = path
    return f"{shown}:{func}:{line}"


def culprit(exc: BaseException, pm: Any) -> tuple[str, str, str] | None:
    """(plugin, hook, frame) for an exception a hook implementation let out,
    or None when no hook implementation is on the traceback (a core bug)."""
    impls = _impls(pm)
    frames: list[tuple[FrameType, int]] = list(traceback.walk_tb(exc.__traceback__))
    at = None
    for i, (frame, _) in enumerate(frames):
        if frame.f_code in impls:
            at = i
    if at is None:
        return None
    name, hook, plugin = impls[frames[at][0].f_code]
    roots, base = _roots(plugin)
    own = frames[at]
    for frame, line in frames[at:]:
        fname = frame.f_code.co_filename
        if any(fname == r or fname.startswith(r) for r in roots):
            own = (frame, line)
    code = own[0].f_code
    return name.replace(":", " "), hook, _show(code.co_filename, base, code.co_name, own[1])


def _returned_by(exc: HookResultError, pm: Any) -> str:
    """Where the one implementation that returned the bad value is defined."""
    for code, (name, hook, plugin) in _impls(pm).items():
        if hook == exc.hook and name in exc.plugins[:1]:
            _, base = _roots(plugin)
            return _show(code.co_filename, base, code.co_name, code.co_firstlineno)
    return ""


def describe(exc: BaseException, pm: Any | None, step: int | None) -> str:
    """One line for a run that ended in *exc* (no ``kvmsim:`` prefix)."""
    when = "during set-up" if step is None else f"at step {step}"
    if isinstance(exc, HookResultError):
        where = _returned_by(exc, pm) if pm is not None and len(exc.plugins) == 1 else ""
        return f"{exc} {when}" + (f" (defined at {where})" if where else "")
    what = f"{type(exc).__name__}: {exc}"
    found = culprit(exc, pm) if pm is not None else None
    if found is None:
        from kvmsim.matrix import where_raised

        at = where_raised(exc)
        return (
            f"internal error: {what} {when}" + (f" at {at}" if at else "") + " (a bug in kvmsim "
            "or a plugin; please report it)"
        )
    plugin, hook, frame = found
    return f"plugin {plugin} raised {what} in hook {hook} {when} at {frame}"
