"""[[known]] records: the loader, and how cells are classified against them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvmsim.errors import ScenarioError
from kvmsim.matrix import ScenarioEntry, plan, run
from kvmsim.scenario import KnownDefect, parse_scenario

from .conftest import ANON_WRITE, ZERO_READ

LEAK = """
[[known]]
strategy = "generic_v4_16"
arch = "ppc_radix"
verdicts = ["refcount_leak"]
reason = "L.1: the v4.17 radix handler never puts the zero page"
"""


def test_loader_reads_known_records() -> None:
    text = ZERO_READ.format(
        name="z",
        known=LEAK
        + """
[[known]]
strategy = "cedric_rfc"
verdicts = ["oops", "lock_leak"]
outcomes = { 0 = "oops" }
failures = { 0 = ["outcome", "frame"] }
reason = "J.3"
""",
    )
    sc = parse_scenario(text, "z.toml")
    assert sc.known[0] == KnownDefect(
        strategy="generic_v4_16",
        arch="ppc_radix",
        verdicts=("refcount_leak",),
        reason="L.1: the v4.17 radix handler never puts the zero page",
    )
    k = sc.known[1]
    assert k.arch is None and k.verdicts == ("lock_leak", "oops")
    assert k.outcomes == ((0, "oops"),) and k.failures == ((0, ("frame", "outcome")),)
    assert sc.known_for("cedric_rfc", "x86_ept") == (k,)
    assert sc.known_for("generic_v4_16", "x86_ept") == ()


@pytest.mark.parametrize(
    ("record", "key", "words"),
    [
        ('strategy = "s"\nverdicts = ["leak"]\nreason = "r"', "known[0].verdicts[0]", "unknown"),
        ('strategy = "s"\nverdicts = []', "known[0].reason", "missing"),
        ('strategy = "s"\nverdicts = []\nreason = " "', "known[0].reason", "empty"),
        (
            'strategy = "s"\nverdicts = []\nreason = "r"\noutcomes = { 7 = "oops" }',
            "known[0].outcomes.7",
            "step index",
        ),
        (
            'strategy = "s"\nverdicts = []\nreason = "r"\noutcomes = { 0 = "boom" }',
            "known[0].outcomes.0",
            "unknown outcome",
        ),
        (
            'strategy = "s"\nverdicts = []\nreason = "r"\nfailures = { 0 = ["colour"] }',
            "known[0].failures.0[0]",
            "unknown expect key",
        ),
        (
            'strategy = "s"\nverdicts = []\nreason = "r"\nstrategi = "x"',
            "known[0].strategi",
            "did you mean",
        ),
    ],
)
def test_bad_known_record_is_one_clear_error(record: str, key: str, words: str) -> None:
    # a scenario file mistake never gives a traceback: one ScenarioError with the key path
    with pytest.raises(ScenarioError) as e:
        parse_scenario(ZERO_READ.format(name="z", known="[[known]]\n" + record), "z.toml")
    assert e.value.key == key and words in str(e.value)


def test_known_arch_must_match_the_scenario_arch() -> None:
    text = 'arch = "ppc_radix"\n' + ZERO_READ.format(
        name="z", known='[[known]]\nstrategy = "s"\narch = "x86_ept"\nverdicts = []\nreason = "r"'
    )
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "z.toml")
    assert e.value.key == "known[0].arch"


def test_duplicate_known_record() -> None:
    rec = '[[known]]\nstrategy = "s"\nverdicts = []\nreason = "r"\n'
    with pytest.raises(ScenarioError) as e:
        parse_scenario(ZERO_READ.format(name="z", known=rec + rec), "z.toml")
    assert e.value.key == "known[1].strategy"


def _statuses(entries: list[ScenarioEntry]) -> dict[str, str]:
    p = plan(arches=["ppc_radix"], strategies=["generic_v4_16"], entries=entries)
    res = run(p)
    return {c.scenario: c.status for c in res.ordered()}


def test_classification(make_library: Callable[[dict[str, str]], list[ScenarioEntry]]) -> None:
    wrong = LEAK.replace('["refcount_leak"]', '["stale_mapping"]')
    lib = make_library(
        {
            # L.1: the zero-page leak reproduces, and is recorded: kfail
            "kfail": ZERO_READ.format(name="kfail", known=LEAK),
            # the same leak, not recorded: a failure the run reports
            "fail": ZERO_READ.format(name="fail", known=""),
            # recorded with other verdicts than the run produces: fail
            "other": ZERO_READ.format(name="other", known=wrong),
            # a record for a run that passes: xpass (the bug did not reproduce)
            "xpass": ANON_WRITE.format(name="xpass", known=LEAK.replace("refcount_leak", "oops")),
            "pass": ANON_WRITE.format(name="pass", known=""),
            # a record for another arch does not apply
            "elsewhere": ZERO_READ.format(
                name="elsewhere", known=LEAK.replace('"ppc_radix"', '"x86_ept"')
            ),
        }
    )
    assert _statuses(lib) == {
        "elsewhere": "fail",
        "fail": "fail",
        "kfail": "kfail",
        "other": "fail",
        "pass": "pass",
        "xpass": "xpass",
    }


def test_outcomes_and_failures_narrow_a_record(
    make_library: Callable[[dict[str, str]], list[ScenarioEntry]],
) -> None:
    ok = LEAK + 'outcomes = { 0 = "mapped" }\n'
    bad = LEAK + 'outcomes = { 0 = "efault" }\n'
    bad_fail = LEAK + 'failures = { 0 = ["frame"] }\n'
    lib = make_library(
        {
            "a": ZERO_READ.format(name="a", known=ok),
            "b": ZERO_READ.format(name="b", known=bad),
            # the leak is an unexpected verdict, not a failed expect key, at step 0
            "c": ZERO_READ.format(name="c", known=bad_fail),
        }
    )
    assert _statuses(lib) == {"a": "kfail", "b": "fail", "c": "fail"}
