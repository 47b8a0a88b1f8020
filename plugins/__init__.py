"""kvmsim's builtin plugins (import name ``kvmsim_plugins``).

The core never imports these: each is declared as an entry point in
pyproject.toml and found exactly as a third-party plugin would be.
"""
