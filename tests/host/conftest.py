from __future__ import annotations

import pytest

from kvmsim.host import Mm, PhysMem, RecordingNotifier


@pytest.fixture(params=[12, 16], ids=["4k", "64k"])
def page_shift(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def phys(page_shift: int) -> PhysMem:
    return PhysMem(page_shift, ram_pages=1 << 20)


@pytest.fixture
def mm(phys: PhysMem) -> Mm:
    return Mm(phys)


@pytest.fixture
def rec(mm: Mm) -> RecordingNotifier:
    r = RecordingNotifier()
    mm.notifiers.register(r)
    return r
