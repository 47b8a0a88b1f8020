"""kvmsim: an executable model of the KVM stage-2 page-fault path."""

from kvmsim.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
