"""The trace-free copy the ``trace_off`` benchmark compares against."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import kvmsim_plugins

import kvmsim
from kvmsim.tracestrip import copy_packages, strip_source

SOURCE = textwrap.dedent(
    """
    def f(kvm, tr, a, x):
        n = 1
        if tr.enabled:
            tr.emit("one", n=n)
        if kvm.tracer.enabled:
            kvm.tracer.emit("two")
        else:
            n += 1
        if x and tr.enabled:
            tr.emit("three")
        if a.enabled:
            n += 10
        if not tr.enabled:
            n += 100
        tr.emit("bare")
        return n

    def g(tr):
        if tr.enabled:
            tr.emit("only")
    """
)


def _run(src: str) -> dict[str, object]:
    ns: dict[str, object] = {}
    exec(compile(src, "<strip>", "exec"), ns)
    return ns


def test_strip_source_removes_guards_and_emits_only() -> None:
    out, removed = strip_source(SOURCE)
    assert removed == 5  # three guards, the bare emit, the guard in g
    assert "emit" not in out
    assert "a.enabled" in out and "not tr.enabled" in out  # not trace guards

    class Off:
        enabled = False

        def emit(self, *a: object, **k: object) -> None:
            raise AssertionError("emit called with tracing off")

    class Kvm:
        tracer = Off()

    class A:
        enabled = True

    before = _run(SOURCE.replace('tr.emit("bare")', "pass"))
    after = _run(out)
    for x in (False, True):
        args = (Kvm(), Off(), A(), x)
        assert after["f"](*args) == before["f"](*args) == 112  # type: ignore[operator]
    assert after["g"](Off()) is None  # type: ignore[operator]  # its body is now `pass`


def test_stripped_packages_have_no_trace_and_compile(tmp_path: Path) -> None:
    packages = {
        "kvmsim": Path(kvmsim.__path__[0]),
        "kvmsim_plugins": Path(kvmsim_plugins.__path__[0]),
    }
    removed = copy_packages(packages, tmp_path, strip=True)
    assert removed > 100
    emits = 0
    for py in tmp_path.rglob("*.py"):
        tree = ast.parse(py.read_text(encoding="utf-8"), str(py))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "emit" and py.name != "trace.py":
                    emits += 1
    assert emits == 0
    # the plain copy is a copy
    plain = copy_packages(packages, tmp_path / "plain", strip=False)
    assert plain == 0
    src = Path(kvmsim.__path__[0]) / "kvm" / "vcpu.py"
    assert (tmp_path / "plain" / "kvmsim" / "kvm" / "vcpu.py").read_bytes() == src.read_bytes()
