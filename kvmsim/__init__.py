"""kvmsim: an executable model of the KVM stage-2 page-fault path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmsim.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``from kvmsim import hookimpl`` imports pluggy on first use only, so
    # that ``kvmsim --help`` and other commands that load no plugin start fast
    if name == "hookimpl":
        from kvmsim.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'kvmsim' has no attribute {name!r}")
