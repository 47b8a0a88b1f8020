from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvmsim.matrix import ScenarioEntry, library_scenarios

# A scenario whose outcome on ppc_radix/generic_v4_16 the kernel semantics
# fix: a read fault on untouched anon memory maps the zero page, and the v4.17
# radix handler (which generic_v4_16 sits behind on ppc_radix) never drops
# gup's reference on it (kernel-semantics L.1, table row "v4.17 PPC radix").
ZERO_READ = """
name = "{name}"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "access"
gpa = 0x10000
op = "read"
expect = {{ outcome = "mapped", frame = "host", verdicts = [] }}
{known}
"""

# A store to untouched anon memory: gup pins a new page, put after mapping
# (A.3, A.11): every modelled strategy of the generic family passes it.
ANON_WRITE = """
name = "{name}"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "access"
gpa = 0x10000
op = "write"
expect = {{ outcome = "mapped", writable = true, frame = "host", verdicts = [] }}
[[step]]
do = "munmap"
vma = "ram"
expect = {{ verdicts = [] }}
{known}
"""


@pytest.fixture
def make_library(tmp_path: Path) -> Callable[[dict[str, str]], list[ScenarioEntry]]:
    """Write scenario files (name -> TOML) and load them as a library."""

    def make(files: dict[str, str]) -> list[ScenarioEntry]:
        paths = []
        for name, text in files.items():
            p = tmp_path / f"{name}.toml"
            p.write_text(text)
            paths.append(("test", p))
        return library_scenarios(paths)

    return make
