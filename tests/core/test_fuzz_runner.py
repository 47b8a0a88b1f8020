"""Random and malformed scenarios thrown at the loader and the runner: each
ends in one clear error (a KvmsimError, exit 2 in the CLI) or a completed run
— never an unexpected exception.  Simulated oopses and deadlocks are outcomes
inside a completed run."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmsim.errors import KvmsimError
from kvmsim.registry import discover, info_of, load
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario

ARCH = "ppc_radix"
PAGE = 0x10000
BACKINGS = ["anon", "shmem", "file", "hugetlbfs", "pfnmap_linear", "pfnmap_fault", "mixedmap"]
HOST_STEPS = ["munmap", "mprotect", "poison", "migrate", "split_thp", "host_write", "age"]


def _strategies() -> list[str]:
    out = []
    for name, entry in sorted(discover()["strategy"].items()):
        try:
            if info_of("strategy", load(entry)).applies_to(ARCH):
                out.append(name)
        except KvmsimError:
            continue
    return out


STRATEGIES = _strategies()


@st.composite
def scenario_text(draw: st.DrawFn) -> str:
    lines = ['name = "fuzz"', f'arch = "{ARCH}"']
    nv = draw(st.integers(1, 3))
    sizes = []
    for i in range(nv):
        backing = draw(st.sampled_from(BACKINGS))
        huge = None
        if backing == "hugetlbfs":
            huge = "2M"
            size = 0x200000 * draw(st.integers(1, 2))
        elif backing == "anon" and draw(st.booleans()):
            huge = "2M"
            size = 0x200000 * draw(st.integers(1, 2))
        else:
            size = PAGE * draw(st.integers(1, 16))
        sizes.append(size)
        prot = draw(st.sampled_from(["r", "rw", "rx", "rwx"]))
        shared = draw(st.booleans()) if backing != "pfnmap_fault" else True
        lines += [
            "[[vma]]",
            f'name = "v{i}"',
            f"size = {size}",
            f'backing = "{backing}"',
            f'prot = "{prot}"',
            f"shared = {str(shared).lower()}",
        ]
        if huge:
            lines.append(f'huge = "{huge}"')
        if backing in ("pfnmap_linear", "pfnmap_fault", "mixedmap"):
            kind = draw(st.sampled_from(["mmio", "ram", "ram_unrefcounted"]))
            lines.append(f'pfn_kind = "{kind}"')
        if backing == "pfnmap_fault":
            lines.append(f"fault_retry = {draw(st.integers(0, 2))}")
        if draw(st.booleans()):
            lines.append("populate = true")
    gpa = 0
    slots = []
    for i in range(nv):
        if draw(st.booleans()) or i == 0:
            lines += [
                "[[memslot]]",
                f"gpa = {gpa:#x}",
                f'vma = "v{i}"',
                f"readonly = {str(draw(st.booleans())).lower()}",
            ]
            slots.append((gpa, sizes[i]))
            gpa += max(sizes[i], 0x200000) + 0x200000
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)) == 0:
            i = draw(st.integers(0, nv - 1))
            kind = draw(st.sampled_from(HOST_STEPS))
            off = PAGE * draw(st.integers(0, sizes[i] // PAGE - 1))
            lines += [
                "[[step]]",
                f'do = "{kind}"',
                f'vma = "v{i}"',
                f"offset = {off}",
                f"size = {PAGE}",
            ]
            if kind == "mprotect":
                lines.append(f'prot = "{draw(st.sampled_from(["r", "rw"]))}"')
            if draw(st.booleans()):
                point = draw(
                    st.sampled_from(["after_hva_to_pfn", "before_create_pte", "mmap_sem_dropped"])
                )
                lines.append(f'at = "{point}"')
                base, size = draw(st.sampled_from(slots))
                lines += ["[[step]]", 'do = "access"', f"gpa = {base:#x}", 'op = "read"']
        else:
            base, size = draw(st.sampled_from(slots))
            addr = base + draw(st.integers(0, size + PAGE))
            op = draw(st.sampled_from(["read", "write", "exec"]))
            lines += ["[[step]]", 'do = "access"', f"gpa = {addr:#x}", f'op = "{op}"']
    return "\n".join(lines) + "\n"


def run_text(text: str, strategy: str) -> None:
    try:
        sc = parse_scenario(text, "fuzz.toml")
        Simulation(sc, strategy=strategy).run()
    except KvmsimError:
        pass


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(text=scenario_text(), strategy=st.sampled_from(STRATEGIES))
def test_random_valid_scenarios_run_to_completion(text: str, strategy: str) -> None:
    run_text(text, strategy)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    text=scenario_text(),
    cut=st.integers(0, 10_000),
    junk=st.sampled_from(
        [
            "",
            "=",
            '"',
            "[[step]]",
            "0x",
            "-1",
            "size = 0",
            "gpa = 7",
            'do = "access"',
            "op = 3",
            "\x00",
            "[vma]",
            "vma = 1",
        ]
    ),
    strategy=st.sampled_from(STRATEGIES),
)
def test_mutated_scenarios_error_cleanly_or_run(
    text: str, cut: int, junk: str, strategy: str
) -> None:
    pos = cut % (len(text) + 1)
    run_text(text[:pos] + junk + text[pos:], strategy)
