"""``kvmsim bench --backend kvm``: flags checked anywhere, figures where
/dev/kvm is usable."""

from __future__ import annotations

import json
import struct

import pytest

from kvmsim.cli import main
from kvmsim.realkvm import guest
from kvmsim.realkvm.host import probe


def test_touch_loop_stores_to_every_page_then_exits() -> None:
    code = guest.touch_loop(0x1000, 5, 4096)
    assert code[:2] == b"\x48\xbf" and struct.unpack_from("<Q", code, 2)[0] == 0x1000
    assert code[10:12] == b"\x48\xb9" and struct.unpack_from("<Q", code, 12)[0] == 5
    body = code[20:-4]
    assert body == b"\x88\x07\x48\x81\xc7" + struct.pack("<i", 4096) + b"\x48\xff\xc9"
    assert code[-4] == 0x75 and struct.unpack("<b", code[-3:-2])[0] == -(len(body) + 2)
    assert code[-2:] == b"\xe6\x10"


def test_the_kvm_backend_takes_only_demand_paging(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--workload", "reaccess", "--backend", "kvm"]) == 2
    assert "only --workload demand_paging" in capsys.readouterr().err


HOST = probe()


@pytest.mark.realkvm
@pytest.mark.skipif(not HOST.usable, reason=f"no usable /dev/kvm: {HOST.reason}")
def test_real_faults_per_second_beside_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--workload", "demand_paging", "--backend", "kvm", "--mem", "8M", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["pages"] == 2048 and r["module"] == HOST.module
    assert r["faults_per_s"] > 0 and r["vm_runs_per_s"] > 0 and r["model_faults_per_s"] > 0
    assert r["model_arch"] == "x86_ept" and r["model_strategy"] == "follow_pfn_2024"
    assert r["model_to_real"] == pytest.approx(
        r["model_faults_per_s"] / r["faults_per_s"], rel=1e-3
    )
