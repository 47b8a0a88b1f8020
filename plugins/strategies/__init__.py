"""The hva_to_pfn strategies: one module per historical version, each an
entry point in ``kvmsim.strategy``.  Shared building blocks of the generic
virt/kvm code live in :mod:`kvmsim_plugins.strategies.generic`."""
