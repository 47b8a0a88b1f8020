"""kvmsim's builtin scenario library: the ``*.toml`` files in this package.

List them with :func:`kvmsim.scenario.builtin_scenarios`.
"""
