"""Suite-wide settings: hypothesis draws the same examples on every run, so
CI is deterministic and any failure it finds reproduces as is."""

from hypothesis import settings

settings.register_profile("kvmsim", derandomize=True)
settings.load_profile("kvmsim")
