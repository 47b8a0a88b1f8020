"""Plugin discovery through entry points, and one PluginManager per simulation.

Entry-point groups: ``kvmsim.arch``, ``kvmsim.strategy``, ``kvmsim.device``
(plugins) and ``kvmsim.scenarios`` (packages holding scenario TOML files).
The core imports no plugin by module path: builtin plugins are found exactly
as a third-party one is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy
from attrs import frozen

from kvmsim import hookspecs
from kvmsim.errors import HookResultError, PluginError, did_you_mean
from kvmsim.hooktypes import FaultResult, HvaToPfnResult, Translation

KINDS = ("arch", "strategy", "device")
GROUPS = {kind: f"kvmsim.{kind}" for kind in KINDS}
SCENARIO_GROUP = "kvmsim.scenarios"
HOT_HOOKS = ("translate", "handle_page_fault", "hva_to_pfn", "create_pte")
INFO_HOOK = {"arch": "arch_info", "strategy": "strategy_info", "device": "device_info"}
HOOK_TRACE_ENV = "KVMSIM_TRACE_HOOKS"
#: The core step kind plugins may extend with keys of their own (``step_kinds``).
ACCESS = "access"
#: What the hot hooks the core calls return.  A wrong type is blamed on its
#: plugin where the value crosses into the core (``Dispatcher.bad_result``):
#: ``translate`` and ``handle_page_fault`` in the vcpu loop, ``hva_to_pfn`` in
#: ``Kvm.hva_to_pfn``.  Only the type, inline: a wrapper around a direct call
#: would cost more than the call.  (``create_pte``'s result goes back to the
#: arch that implements it, so a wrong one already fails in that plugin.)
HOT_RESULTS: dict[str, type] = {
    "translate": Translation,
    "handle_page_fault": FaultResult,
    "hva_to_pfn": HvaToPfnResult,
}


@frozen
class PluginEntry:
    """One discovered entry point.  ``others`` lists further distributions
    that registered the same name (an error when this name is selected)."""

    kind: str
    name: str
    value: str
    dist: str
    version: str
    entry_point: EntryPoint
    others: tuple[str, ...] = ()


_cache: dict[str, dict[str, PluginEntry]] | None = None
_schema_cache: tuple[dict[str, Any], dict[str, Any]] | None = None
_scenario_eps: list[EntryPoint] | None = None
_all_eps: dict[str, list[EntryPoint]] | None = None


def reset_cache() -> None:
    """Forget what was discovered (tests that add distributions at run time)."""
    global _cache, _schema_cache, _scenario_eps, _all_eps, _points_cache, _outcomes_cache
    _all_eps = None
    _points_cache = None
    _outcomes_cache = None
    _cache = None
    _schema_cache = None
    _scenario_eps = None
    _valid.clear()
    _impls.clear()
    _infos.clear()
    _sets.clear()


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("?", "?")
    return (dist.metadata["Name"] or "?", dist.version or "?")


def _entry_points(group: str) -> list[EntryPoint]:
    """One group's entry points, from a single read of every distribution's
    metadata per process (each read costs milliseconds)."""
    global _all_eps
    if _all_eps is None:
        every = entry_points()  # SelectableGroups on 3.11, EntryPoints later
        _all_eps = {g: list(every.select(group=g)) for g in (*GROUPS.values(), SCENARIO_GROUP)}
    return _all_eps.get(group, [])


def discover() -> dict[str, dict[str, PluginEntry]]:
    """Read the entry points once per process, indexed by kind then name."""
    global _cache
    if _cache is None:
        found: dict[str, dict[str, PluginEntry]] = {}
        for kind, group in GROUPS.items():
            by_name: dict[str, PluginEntry] = {}
            for ep in sorted(_entry_points(group), key=lambda e: (e.name, e.value)):
                dist, version = _dist_of(ep)
                prev = by_name.get(ep.name)
                if prev is not None:
                    if (prev.dist, prev.value) == (dist, ep.value):
                        continue  # the same distribution seen twice on sys.path
                    by_name[ep.name] = PluginEntry(
                        prev.kind,
                        prev.name,
                        prev.value,
                        prev.dist,
                        prev.version,
                        prev.entry_point,
                        (*prev.others, f"{dist} {version} ({ep.value})"),
                    )
                    continue
                by_name[ep.name] = PluginEntry(kind, ep.name, ep.value, dist, version, ep)
            found[kind] = by_name
        _cache = found
    return _cache


def load(entry: PluginEntry) -> ModuleType:
    """Import one plugin; any failure becomes a :class:`PluginError` naming
    the entry point, its distribution and the import error."""
    if entry.others:
        raise PluginError(
            f"{entry.kind} {entry.name!r} is provided by more than one distribution: "
            f"{entry.dist} {entry.version} ({entry.value}) and {', '.join(entry.others)}; "
            "uninstall one of them"
        )
    try:
        plugin = entry.entry_point.load()
    except Exception as exc:  # an import error of any kind, reported in one line
        raise PluginError(
            f"cannot load {entry.kind} plugin {entry.name!r} "
            f"(entry point {entry.value!r} of distribution {entry.dist} {entry.version}): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return plugin  # type: ignore[no-any-return]


def lookup(kind: str, name: str) -> PluginEntry:
    """The entry for ``name``, or an error with close matches and the list."""
    available = discover().get(kind, {})
    entry = available.get(name)
    if entry is None:
        names = sorted(available)
        hint = did_you_mean(name, names)
        raise PluginError(
            f"unknown {kind} {name!r}{hint} Available: {', '.join(names) or 'none'} "
            "(if you just added it, reinstall the package)"
        )
    return entry


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


# One manager per process that only checks plugins: a plugin is registered,
# checked against the specs and unregistered, once per plugin object.
_validator: pluggy.PluginManager | None = None
_valid: dict[int, tuple[object, str | None]] = {}  # id -> (plugin kept alive, error)
_impls: dict[int, tuple[object, dict[str, Callable[..., Any]]]] = {}
_infos: dict[tuple[str, int], tuple[object, Any]] = {}


def _check(plugin: object) -> str | None:
    """Why ``plugin``'s hookimpls do not match the specs (a misspelled hook,
    a wrong argument), or None; computed once per plugin object."""
    global _validator
    known = _valid.get(id(plugin))
    if known is not None and known[0] is plugin:
        return known[1]
    if _validator is None:
        _validator = _new_manager()
    pm = _validator
    error: str | None = None
    try:
        pm.register(plugin, name=f"check:{id(plugin)}")
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        error = str(exc)
    finally:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
    _valid[id(plugin)] = (plugin, error)
    return error


def _impl(plugin: object, hook: str) -> Callable[..., Any] | None:
    """The function ``plugin`` marks as its implementation of ``hook`` (by
    its own name or ``specname``), read once per plugin object."""
    known = _impls.get(id(plugin))
    if known is None or known[0] is not plugin:
        marker = f"{hookspecs.PROJECT}_impl"
        found: dict[str, Callable[..., Any]] = {}
        for attr in dir(plugin):
            fn = getattr(plugin, attr, None)
            opts = getattr(fn, marker, None)
            if isinstance(opts, dict) and callable(fn):
                found[opts.get("specname") or attr] = fn
        known = (plugin, found)
        _impls[id(plugin)] = known
    return known[1].get(hook)


def info_of(kind: str, plugin: ModuleType | object) -> Any:
    """Call one plugin's info hook (``arch_info``...) on that plugin alone,
    without building a manager; the answer is kept per plugin object (info
    values are frozen).

    :raises PluginError: the plugin's hookimpls do not match the specs (a
        misspelled hook, a wrong argument), named with the plugin.
    """
    key = (kind, id(plugin))
    known = _infos.get(key)
    if known is not None and known[0] is plugin:
        return known[1]
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    error = _check(plugin)
    if error is not None:
        raise PluginError(f"{kind} plugin {name!r} is invalid: {error}")
    fn = _impl(plugin, INFO_HOOK[kind])
    info = None if fn is None else fn()
    _infos[key] = (plugin, info)
    return info


def validate(plugin: object, name: str) -> None:
    """Check ``plugin``'s hookimpls against the specs; a misspelled hook or a
    wrong argument is one clear error."""
    error = _check(plugin)
    if error is not None:
        raise PluginError(f"plugin {name!r} is invalid: {error}")


def scenario_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """What plugins add to the scenario schema: ``(step_kinds, device_kinds)``,
    by name, from every discovered arch and device plugin (``step_kinds`` and
    ``device_kind`` hooks).  Plugins that fail to load add nothing here; they
    are reported when selected.  Cached with the discovery."""
    global _schema_cache
    if _schema_cache is None:
        steps: dict[str, Any] = {}
        devices: dict[str, Any] = {}
        for kind in ("arch", "device"):
            for name, entry in sorted(discover().get(kind, {}).items()):
                try:
                    plugin = load(entry)
                except PluginError:
                    continue
                if _check(plugin) is not None:
                    continue  # reported as a clear error when the plugin is selected
                step_kinds = _impl(plugin, "step_kinds")
                for sk in (step_kinds() if step_kinds else None) or ():
                    prev = steps.get(ACCESS)
                    if prev is not None and getattr(sk, "name", None) == ACCESS:
                        sk = _extend_access(prev, sk, f"{kind}:{name}")
                    steps[sk.name] = sk
                if kind == "device":
                    device_kind = _impl(plugin, "device_kind")
                    devices[name] = (device_kind() if device_kind else None) or name
        _schema_cache = (steps, devices)
    return _schema_cache


def _extend_access(prev: Any, more: Any, plugin: str) -> Any:
    """Two plugins' extensions of the core ``access`` step, as one (see the
    ``step_kinds`` hook); a key both declare is the second one's error."""
    from kvmsim.scenario.model import StepKind

    fields = getattr(more, "fields", None)
    if not isinstance(more, StepKind) or fields is None:
        return more  # the loader reports what is wrong with it
    both = sorted(set(prev.fields) & set(fields))
    if both:
        raise PluginError(
            f"{plugin} extends the access step with {', '.join(map(repr, both))}, "
            "which another plugin already added"
        )
    return StepKind(ACCESS, {**prev.fields, **fields})


_points_cache: dict[str, tuple[str, str]] | None = None
_outcomes_cache: dict[str, tuple[str, str]] | None = None


def _declared(hook: str, core: Iterable[str]) -> dict[str, tuple[str, str]]:
    """What plugins declare through a name → description hook
    (``yield_points``, ``outcomes``): name → ``(plugin, description)``,
    "plugin" as ``kind:name``.  Names in *core* and names an earlier plugin
    (by kind, then name) took are skipped; plugins that fail to load add
    nothing."""
    reserved = set(core)
    found: dict[str, tuple[str, str]] = {}
    for kind in KINDS:
        for name, entry in sorted(discover().get(kind, {}).items()):
            try:
                plugin = load(entry)
            except PluginError:
                continue
            fn = _impl(plugin, hook)
            if fn is None or _check(plugin) is not None:
                continue
            for key, what in dict(fn() or {}).items():
                if key not in reserved and key not in found:
                    found[str(key)] = (f"{kind}:{name}", str(what))
    return found


def plugin_points() -> dict[str, tuple[str, str]]:
    """The yield points plugins declare (``yield_points`` hooks): name →
    ``(plugin, description)``, "plugin" as ``kind:name``.  Core point names
    and names an earlier plugin (by kind, then name) took are skipped;
    plugins that fail to load add nothing.  Read once per process."""
    global _points_cache
    if _points_cache is None:
        from kvmsim.points import PLACEMENTS, POINTS

        _points_cache = _declared("yield_points", (*POINTS, *PLACEMENTS))
    return _points_cache


def plugin_outcomes() -> dict[str, tuple[str, str]]:
    """The step outcomes plugins declare (``outcomes`` hooks), as
    :func:`plugin_points` gives points: name → ``(plugin, description)``,
    core outcomes (and the other words a step report uses) skipped.  Read
    once per process."""
    global _outcomes_cache
    if _outcomes_cache is None:
        from kvmsim.scenario.model import KNOWN_STEP_OUTCOMES

        _outcomes_cache = _declared("outcomes", KNOWN_STEP_OUTCOMES)
    return _outcomes_cache


def describe_all() -> list[dict[str, Any]]:
    """What ``kvmsim plugins`` shows: every discovered plugin, loaded."""
    rows: list[dict[str, Any]] = []
    for kind in KINDS:
        for name, entry in sorted(discover().get(kind, {}).items()):
            row: dict[str, Any] = {
                "kind": kind,
                "name": name,
                "distribution": entry.dist,
                "version": entry.version,
                "module": entry.value,
            }
            try:
                plugin = load(entry)
                info = info_of(kind, plugin)
                row["description"] = getattr(info, "description", "")
                if kind == "strategy":
                    row["arches"] = list(info.arches)
                row["hooks"] = sorted(
                    n
                    for n in dir(plugin)
                    if hasattr(getattr(plugin, n), f"{hookspecs.PROJECT}_impl")
                )
            except PluginError as exc:
                row["error"] = str(exc)
            rows.append(row)
    return rows


def _direct(impl: pluggy.HookImpl, argnames: tuple[str, ...]) -> Callable[..., Any]:
    fn = impl.function
    if tuple(impl.argnames) == argnames:
        return fn
    wanted = tuple(impl.argnames)
    return lambda **kw: fn(**{k: kw[k] for k in wanted})


def _unwrapped(caller: Any) -> list[pluggy.HookImpl] | None:
    """The implementations of *caller* in pluggy's call order, or None when
    one is a wrapper (only pluggy can run those)."""
    impls = caller.get_hookimpls()
    if any(i.hookwrapper or i.wrapper for i in impls):
        return None
    return list(reversed(impls))  # pluggy calls the last registered first


def _call_all(caller: Any, impls: list[pluggy.HookImpl]) -> Callable[..., Any]:
    """What pluggy's ``_multicall`` does for a hook without wrappers, minus
    its bookkeeping: each implementation gets its own arguments
    positionally; a firstresult hook stops at the first non-None answer,
    another collects every non-None answer."""
    calls = [(i.function, tuple(i.argnames)) for i in impls]
    firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))

    if firstresult:

        def first(**kw: Any) -> Any:
            for fn, names in calls:
                r = fn(*[kw[n] for n in names])
                if r is not None:
                    return r
            return None

        run = first
    else:

        def every(**kw: Any) -> list[Any]:
            out = []
            for fn, names in calls:
                r = fn(*[kw[n] for n in names])
                if r is not None:
                    out.append(r)
            return out

        run = every
    run.get_hookimpls = caller.get_hookimpls  # type: ignore[attr-defined]
    run.spec = caller.spec  # type: ignore[attr-defined]
    return run


class _Relay:
    """``pm.hook`` with its pluggy calls replaced, hook by hook, by direct
    loops over the implementations (a pluggy call costs ~0.8 µs, most of a
    broadcast hook's cost on the per-step path).  Hooks with a wrapper keep
    pluggy's caller."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        for name, caller in vars(pm.hook).items():
            if not hasattr(caller, "get_hookimpls"):
                continue
            impls = _unwrapped(caller)
            setattr(self, name, caller if impls is None else _call_all(caller, impls))


class Dispatcher:
    """Hook callers for one simulation, built once after the manager is frozen.

    A hot firstresult hook with exactly one implementation and no wrapper is
    called directly (a pluggy call costs ~0.8 µs, a direct one ~0.03 µs);
    otherwise through pluggy.  Every other hook goes through ``hook``, a
    :class:`_Relay` that loops over the implementations itself where no
    wrapper is registered (``pm.hook`` when ``direct`` is off or hook calls
    are monitored).
    """

    __slots__ = ("pm", "hook", *HOT_HOOKS, "notifier_invalidate", "notifier_change_pte")

    def __init__(self, pm: pluggy.PluginManager, *, direct: bool = True) -> None:
        self.pm = pm
        relay: Any = _Relay(pm) if direct and not _monitored() else pm.hook
        self.hook = relay
        for name in HOT_HOOKS:
            caller = getattr(pm.hook, name)
            impls = caller.get_hookimpls()
            if (
                direct
                and len(impls) == 1
                and not impls[0].hookwrapper
                and not impls[0].wrapper
                and not _monitored()
            ):
                spec_args = tuple(caller.spec.argnames) if caller.spec else ()
                setattr(self, name, _direct(impls[0], spec_args))
            else:
                setattr(self, name, caller)
        self.notifier_invalidate = self.hook.notifier_invalidate
        self.notifier_change_pte = self.hook.notifier_change_pte

    def copy(self) -> Dispatcher:
        """A shallow copy: each simulation gets its own, so that a test that
        rebinds one of its callers never changes another run's."""
        new = object.__new__(Dispatcher)
        for name in Dispatcher.__slots__:
            object.__setattr__(new, name, getattr(self, name))
        return new

    def bad_result(self, hook: str, got: object) -> HookResultError:
        """The error for hook *hook* having returned *got* (a wrong type),
        naming the plugins that implement it (pluggy calls the last
        registered first)."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        owners = [str(self.pm.get_name(i.plugin)) for i in reversed(impls)]
        return HookResultError(hook, owners, got, HOT_RESULTS[hook].__name__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hook, name)


def _monitored() -> bool:
    return bool(os.environ.get(HOOK_TRACE_ENV))


def build_manager(
    *,
    arch: str,
    strategy: str,
    devices: Iterable[str] = (),
    extra_plugins: Iterable[object] = (),
    disabled: Iterable[str] = (),
) -> tuple[pluggy.PluginManager, Any, Any]:
    """A fresh PluginManager holding one arch, one strategy and the named
    devices (plus ``extra_plugins``, e.g. test observers), checked and frozen.

    :returns: ``(pm, arch_info, strategy_info)``.
    :raises PluginError: unknown names, broken entry points, a strategy that
        does not apply to the arch, a plugin blocked by ``disabled``.
    """
    blocked = set(disabled)
    for kind, name in (("arch", arch), ("strategy", strategy)):
        if name in blocked:
            raise PluginError(f"{kind} {name!r} is disabled (--disable-plugin)")
    arch_mod = load(lookup("arch", arch))
    strat_mod = load(lookup("strategy", strategy))
    a_info = info_of("arch", arch_mod)
    s_info = info_of("strategy", strat_mod)
    if not s_info.applies_to(arch):
        raise PluginError(
            f"strategy {strategy!r} does not apply to arch {arch!r}; "
            f"it applies to: {', '.join(s_info.arches)}"
        )
    pm = _new_manager()
    plugins: list[tuple[str, object]] = [
        (f"arch:{arch}", arch_mod),
        (f"strategy:{strategy}", strat_mod),
    ]
    for dev in sorted(set(devices)):
        if dev in blocked:
            continue
        plugins.append((f"device:{dev}", load(lookup("device", dev))))
    for i, extra in enumerate(extra_plugins):
        plugins.append((f"extra:{i}", extra))
    for pname, plugin in plugins:
        try:
            pm.register(plugin, name=pname)
        except ValueError as exc:  # the same module registered twice
            raise PluginError(f"cannot register {pname}: {exc}") from None
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {pname} is invalid: {exc}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from None
    if _monitored():
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm, a_info, s_info


@frozen
class PluginSet:
    """What every simulation of one (arch, strategy, devices) shares: the
    checked, frozen manager, the two info values and the dispatcher.  Built
    once per process by :func:`plugin_set`; a run builds only its own state
    (host mm, VM, tracer) and never changes these."""

    pm: pluggy.PluginManager
    arch_info: Any
    strategy_info: Any
    hooks: Dispatcher


_sets: dict[tuple[str, str, tuple[str, ...], frozenset[str], bool], PluginSet] = {}


def plugin_set(
    *,
    arch: str,
    strategy: str,
    devices: Iterable[str] = (),
    disabled: Iterable[str] = (),
    direct: bool = True,
) -> PluginSet:
    """The shared :class:`PluginSet` for these names, built on first use.

    Hook-call monitoring (``KVMSIM_TRACE_HOOKS``) writes through the manager,
    so a monitored set is built afresh every time, as are sets with extra
    plugins (which :func:`build_manager` takes directly).

    :raises PluginError: as :func:`build_manager`.
    """
    blocked = frozenset(disabled)
    key = (arch, strategy, tuple(sorted(set(devices) - blocked)), blocked, direct)
    found = _sets.get(key)
    if found is not None:
        return found
    pm, a_info, s_info = build_manager(
        arch=arch, strategy=strategy, devices=key[2], disabled=blocked
    )
    made = PluginSet(pm, a_info, s_info, Dispatcher(pm, direct=direct))
    if not _monitored():
        _sets[key] = made
    return made


def scenario_entry_points() -> list[EntryPoint]:
    """The ``kvmsim.scenarios`` entry points, read once per process."""
    global _scenario_eps
    if _scenario_eps is None:
        _scenario_eps = sorted(_entry_points(SCENARIO_GROUP), key=lambda e: e.name)
    return _scenario_eps


def scenario_packages() -> list[tuple[str, ModuleType]]:
    """The scenario libraries (``kvmsim.scenarios`` entry points), by name."""
    out = []
    for ep in scenario_entry_points():
        try:
            mod = ep.load()
        except Exception as exc:
            raise PluginError(
                f"cannot load scenario library {ep.name!r} ({ep.value}): {exc}"
            ) from None
        if not isinstance(mod, ModuleType):
            mod = import_module(ep.value)
        out.append((ep.name, mod))
    return out
