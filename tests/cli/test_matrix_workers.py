"""``kvmsim matrix --jobs N`` ended by a signal leaves no worker behind:
SIGTERM is what ``timeout`` and CI cancellation send, SIGKILL what the OOM
killer and a second cancellation send."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"
)

#: How long the workers may outlive their parent.
BOUND = 15.0


def session(sid: int) -> list[int]:
    """Live (non-zombie) processes of session *sid*."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(d.name))
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_workers_end_with_the_matrix(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmsim.cli", "matrix", "--jobs", "2", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the matrix and everything it starts: session proc.pid
    )
    try:
        deadline = time.monotonic() + 120
        while len(session(proc.pid)) < 3:  # the matrix and its two workers
            assert proc.poll() is None, "the matrix ended before its workers started"
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.1)
        time.sleep(0.5)  # the workers are running cells now
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=BOUND) == -sig
        deadline = time.monotonic() + BOUND
        while (left := session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"workers {left} outlived the matrix ({sig.name})"
    finally:
        for pid in session(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
