"""Memory the host model spends per touched 4K page (issue 4).

Not a test: run it and read the figure.

    python benchmarks/host_memory.py [--pages N]

Maps an anonymous vma, write-faults every page in (as a guest's first touch
would through gup), and reports the bytes tracemalloc sees allocated per
touched page, and the same for pages that were never touched (should be ~0:
untouched memory has no per-page state).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc

from kvmsim.host import Mm, PhysMem
from kvmsim.host.constants import FAULT_FLAG_USER, FAULT_FLAG_WRITE
from kvmsim.host.fault import handle_mm_fault


def measure(pages: int) -> dict[str, float]:
    phys = PhysMem(12, ram_pages=max(1 << 22, pages * 2))
    mm = Mm(phys)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    vma = mm.mmap(pages << 12, prot="rw", shared=False, name="ram")
    mapped = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    for i in range(pages):
        handle_mm_fault(mm, vma, vma.start + (i << 12), FAULT_FLAG_WRITE | FAULT_FLAG_USER)
    dt = time.perf_counter() - t0
    touched = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "pages": pages,
        "bytes_untouched_vma": mapped - base,
        "bytes_per_touched_page": (touched - mapped) / pages,
        "faults_per_s": pages / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=65536)
    args = ap.parse_args()
    print(json.dumps(measure(args.pages), indent=2))


if __name__ == "__main__":
    main()
