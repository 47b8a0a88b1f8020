"""hookspecs.py is the plugin author's manual: every spec documents itself."""

import inspect

import pluggy

from kvmsim import hookspecs

SPECS = [
    (name, fn)
    for name, fn in vars(hookspecs).items()
    if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")
]


def test_mandatory_hooks_exist_with_their_names() -> None:
    names = {n for n, _ in SPECS}
    assert {"translate", "hva_to_pfn", "create_pte", "notifier_invalidate"} <= names
    assert {"handle_page_fault", "mmio_access", "device_init", "arch_info"} <= names


def test_firstresult_and_broadcast_as_documented() -> None:
    for name, fn in SPECS:
        opts = getattr(fn, f"{hookspecs.PROJECT}_spec")
        doc = inspect.getdoc(fn) or ""
        last = doc.strip().splitlines()[-1]
        if opts.get("firstresult"):
            assert last == "firstresult", name
        else:
            assert last == "broadcast", name
    hot = {n: getattr(fn, f"{hookspecs.PROJECT}_spec") for n, fn in SPECS}
    for name in ("translate", "hva_to_pfn", "create_pte", "handle_page_fault"):
        assert hot[name].get("firstresult"), name
    assert not hot["notifier_invalidate"].get("firstresult")


def test_every_spec_documents_who_when_what_args_and_return() -> None:
    for name, fn in SPECS:
        doc = inspect.getdoc(fn) or ""
        for section in ("Implemented by:", "Called:", "Models:", ":returns:"):
            assert section in doc, f"{name} lacks {section!r}"
        sig = inspect.signature(fn)
        for param in sig.parameters.values():
            assert f":param {param.name}:" in doc, f"{name} does not document {param.name}"
            assert param.default is inspect.Parameter.empty, f"{name}.{param.name} has a default"
            assert param.annotation is not inspect.Parameter.empty, f"{name}.{param.name} untyped"
        assert sig.return_annotation is not inspect.Signature.empty, name


def test_hookimpl_is_reexported() -> None:
    import kvmsim

    assert isinstance(kvmsim.hookimpl, pluggy.HookimplMarker)
    assert kvmsim.hookimpl.project_name == "kvmsim"
