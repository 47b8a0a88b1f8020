"""A copy of the kvmsim packages with the trace calls taken out, for the
``trace_off`` benchmark (issue 11: "tracing off within 5 % of a build with
the trace calls removed").

The hot path guards every event with ``if tr.enabled:`` (or
``if kvm.tracer.enabled:``, ``if x and tr.enabled:``); with tracing off the
guard is false, so removing the guarded block (keeping an ``else``, if
any) and any unguarded ``tr.emit(...)`` statement changes no decision.
What remains is the model without its trace: the build the issue compares
against.  The copy is written with :func:`ast.unparse` (comments go; the
code is the same).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

__all__ = ["copy_packages", "strip_source"]

_TRACER_NAMES = frozenset({"tr", "tracer"})


def _is_tracer(node: ast.expr) -> bool:
    """``tr``, ``tracer`` or ``<anything>.tracer``."""
    if isinstance(node, ast.Name):
        return node.id in _TRACER_NAMES
    return isinstance(node, ast.Attribute) and node.attr == "tracer"


def _is_guard(test: ast.expr) -> bool:
    """A test that is false whenever tracing is off: ``<tracer>.enabled``,
    or an ``and`` with such an operand."""
    if isinstance(test, ast.Attribute) and test.attr == "enabled":
        return _is_tracer(test.value)
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_guard(v) for v in test.values)
    return False


def _is_emit(stmt: ast.stmt) -> bool:
    """``<tracer>.emit(...)`` as a statement."""
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        return False
    f = stmt.value.func
    return isinstance(f, ast.Attribute) and f.attr == "emit" and _is_tracer(f.value)


class _Strip(ast.NodeTransformer):
    def __init__(self) -> None:
        self.removed = 0

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt] | None:
        if _is_guard(node.test):
            self.removed += 1
            node.body = [ast.Pass()]  # dropped: nothing in it is visited or counted
            self.generic_visit(node)
            return node.orelse or None
        self.generic_visit(node)
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if _is_emit(node):
            self.removed += 1
            return None
        return node


def _fill_empty(tree: ast.AST) -> None:
    """A block left empty by the removal gets a ``pass``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.Interactive)):
            continue
        body = getattr(node, "body", None)
        if isinstance(body, list) and not body:
            node.body = [ast.Pass()]  # type: ignore[attr-defined]


def strip_source(source: str, filename: str = "<string>") -> tuple[str, int]:
    """``source`` without its trace guards and emits: (new source, how many
    guards and emit statements were removed)."""
    tree = ast.parse(source, filename)
    s = _Strip()
    tree = s.visit(tree)
    _fill_empty(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree) + "\n", s.removed


def copy_packages(packages: dict[str, Path], dest: Path, *, strip: bool) -> int:
    """Copy each package folder (import name → folder) under ``dest``,
    stripping the trace from every ``.py`` file when ``strip``; returns the
    number of trace sites removed (0 for a plain copy)."""
    removed = 0
    for name, src in packages.items():
        out = dest / name
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if not strip:
            continue
        for py in sorted(out.rglob("*.py")):
            text, n = strip_source(py.read_text(encoding="utf-8"), str(py))
            if n:
                py.write_text(text, encoding="utf-8")
                removed += n
    return removed
