"""Concurrent runs and their exploration (``kvmsim explore``).

:mod:`kvmsim.explore.runtime` runs a concurrent scenario's actors under one
schedule; :mod:`kvmsim.explore.search` tries every schedule within a bound
(or random ones) and groups the failures into classes.
"""
