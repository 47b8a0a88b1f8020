"""The HTML report: self-contained, and checked in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmsim.matrix import ScenarioEntry, plan, run
from kvmsim.report import render

from .conftest import ANON_WRITE, ZERO_READ

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture
def report(tmp_path: Path, make_library: Callable[[dict[str, str]], list[ScenarioEntry]]) -> Path:
    lib = make_library(
        {
            "zero-read": ZERO_READ.format(name="zero-read", known=""),
            "anon-write": ANON_WRITE.format(name="anon-write", known=""),
        }
    )
    p = plan(arches=["ppc_radix"], strategies=["generic_v4_16", "ppc_original"], entries=lib)
    res = run(p, trace=True)
    out = tmp_path / "matrix.html"
    out.write_text(render(res, "html"))
    return out


def test_html_is_self_contained(report: Path) -> None:
    text = report.read_text()
    # no network: nothing fetched from anywhere, a CSP that forbids it anyway
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "default-src 'none'" in text
    assert text.count("<details>") == 4  # every cell expandable
    assert "hva_to_pfn" in text  # with its trace
    assert "refcount_leak" in text  # and its verdicts


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    profile = tmp_path / "profile"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    url = report.as_uri()
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page's script ran: filters applied, ready flag set, rows counted
    assert 'data-ready="1"' in dom.stdout
    assert "2 of 2 scenarios shown" in dom.stdout
    shot = tmp_path / "matrix.png"
    r = subprocess.run(
        [exe, *flags, f"--screenshot={shot}", "--window-size=1200,800", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 1000, r.stderr[-2000:]
    print(f"screenshot of the HTML report: {shot}")
