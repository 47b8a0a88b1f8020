"""``kvmsim crosscheck``'s exits that need no /dev/kvm: 4 without a usable
one, 2 on bad input (checked before the host is probed)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvmsim.realkvm.command as command
from kvmsim.cli import main
from kvmsim.realkvm.host import HostInfo, probe

NO_KVM = HostInfo(False, "/dev/kvm does not exist (no KVM module loaded)", "6.18", "none")


@pytest.fixture
def no_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command, "probe", lambda: NO_KVM)


@pytest.mark.usefixtures("no_kvm")
def test_no_usable_kvm_exits_4_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crosscheck"]) == 4
    err = capsys.readouterr().err.strip()
    assert err == f"kvmsim: crosscheck: no usable /dev/kvm: {NO_KVM.reason}"


@pytest.mark.usefixtures("no_kvm")
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--strategy", "nosuch"], "nosuch"),
        (["--strategy", "ppc_original"], "ppc_original"),
        (["no-such-glob-*"], "no builtin scenario matches 'no-such-glob-*'"),
        (["kvm-thpp"], "did you mean"),
    ],
)
def test_bad_input_exits_2_in_one_line_before_the_probe(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["crosscheck", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err


@pytest.mark.usefixtures("no_kvm")
def test_a_bad_scenario_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(
        'name = "b"\n[[step]]\ndo = "access"\ngpa = 0\nop = "read"\nexpect = { value = "x" }\n'
    )
    assert main(["crosscheck", str(f)]) == 2
    assert "step[0].expect.value" in capsys.readouterr().err


def test_probe_says_why_a_device_is_unusable(tmp_path: Path) -> None:
    info = probe(str(tmp_path / "kvm"))
    assert not info.usable and "does not exist" in info.reason
    f = tmp_path / "notkvm"
    f.write_text("")
    info = probe(str(f))
    assert not info.usable and str(f) in info.reason
