"""The core ``age`` step: its keys, its bad input (one line, exit 2), and
its answer (``expect.young``) against what the kernel's young notifiers
answer (kernel-notes §L.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.errors import ScenarioError
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario

HEAD = """name = "a"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "4M"
backing = "anon"
populate = true
[[memslot]]
gpa = 0
vma = "ram"
"""
WRITE = '[[step]]\ndo = "access"\ngpa = 0x1000\nop = "write"\n'


def age(**kv: str) -> str:
    return '[[step]]\ndo = "age"\n' + "".join(f"{k} = {v}\n" for k, v in kv.items())


BAD = [
    # (steps, key, what the one line says)
    (age(), "step[0].vma", "missing required key for an 'age' step"),
    (age(vma='"rom"'), "step[0].vma", "no vma of this name"),
    (age(vma='"ram"', young='"tset"'), "step[0].young", "unknown young mode"),
    (age(vma='"ram"', young="true"), "step[0].young", "wrong type"),
    (age(vma='"ram"', offset="0x400000"), "step[0].offset", "outside vma 'ram'"),
    (age(vma='"ram"', offset="0x3ff000", size='"8K"'), "step[0].size", "runs past the end"),
    (age(vma='"ram"', expect='{ young = "yes" }'), "step[0].expect.young", "wrong type"),
    (
        age(vma='"ram"', expect='{ outcome = "mapped" }'),
        "step[0].expect.outcome",
        "cannot expect 'outcome': it is not a guest access",
    ),
    (
        WRITE.replace('"write"\n', '"write"\nexpect = { young = true }\n'),
        "step[0].expect.young",
        "an 'access' step cannot expect 'young'",
    ),
    (
        '[[step]]\ndo = "munmap"\nvma = "ram"\nexpect = { young = false }\n',
        "step[0].expect.young",
        "a 'munmap' step cannot expect 'young'",
    ),
    (
        age(vma='"ram"', at='"before_create_pte"', expect="{ young = true }") + WRITE,
        "step[0].expect.young",
        "its answer is not checked",
    ),
]


@pytest.mark.parametrize(("steps", "key", "says"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_age_steps_are_one_error_at_the_key(steps: str, key: str, says: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(HEAD + steps, "bad.toml")
    assert info.value.key == key
    assert says in str(info.value)


@pytest.mark.parametrize(("steps", "key", "says"), BAD[:6], ids=[b[1] for b in BAD[:6]])
def test_bad_age_steps_exit_2_in_one_line(
    steps: str, key: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(HEAD + steps)
    assert main(["run", str(f), "--strategy", "generic_v4_16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"bad.toml: {key}: " in err and says in err and "Traceback" not in err


def run(steps: str, strategy: str = "generic_v4_16") -> list[bool | None]:
    report = Simulation(parse_scenario(HEAD + steps, "<t>"), strategy=strategy).run()
    assert report.passed, [s.expect_failures for s in report.steps]
    return [s.young for s in report.steps]


def test_clear_is_the_default_and_answers_before_clearing() -> None:
    # mmu_notifier_clear_young's answer: was anything young before it cleared
    young = run(WRITE + age(vma='"ram"') + age(vma='"ram"', young='"clear"'))
    assert young == [None, True, False]


def test_test_young_changes_nothing() -> None:
    steps = WRITE + age(vma='"ram"', young='"test"') * 2 + age(vma='"ram"')
    assert run(steps) == [None, True, True, True]


def test_a_failed_young_expectation_fails_the_run_and_names_the_key() -> None:
    sc = parse_scenario(HEAD + WRITE + age(vma='"ram"', expect="{ young = false }"), "<t>")
    report = Simulation(sc, strategy="generic_v4_16").run()
    assert not report.passed
    assert report.steps[1].expect_failures == ["young: expected False, got True"]
    assert report.to_json()["steps"][1]["young"] is True


def test_the_answer_is_in_the_trace() -> None:
    sc = parse_scenario(HEAD + WRITE + age(vma='"ram"') + age(vma='"ram"', young='"test"'), "<t>")
    report = Simulation(sc, strategy="generic_v4_16", trace=True).run()
    names = ("mmu_notifier_clear_young", "mmu_notifier_test_young")
    host = [(e["event"], e["young"]) for e in report.events if e["event"] in names]
    kvm = [e["young"] for e in report.events if e["event"] == "kvm_mmu_notifier_clear_young"]
    assert ("mmu_notifier_clear_young", True) in host and kvm == [True]
    # test_young asks page by page (khugepaged's way); all were old after the clear
    tests = [y for name, y in host if name == "mmu_notifier_test_young"]
    assert len(tests) == 1024 and not any(tests)
