"""The trace's fast paths (performance rounds 2 and 3): events still go
through a structlog bound logger (the project's trace library), and the
JSON Lines writer (orjson, with a standard-library path for what orjson
cannot write faithfully) writes, for each event, one line with the keys
sorted that reads back as exactly what ``json.dumps(event, sort_keys=True)``
means: big integers, NaN and infinities included."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmsim.trace import Tracer, to_jsonl

_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),  # non-ASCII included: ensure_ascii escapes
)
_VALUE = st.one_of(_SCALAR, st.lists(_SCALAR, max_size=3), st.tuples(_SCALAR, _SCALAR))
_EVENT = st.dictionaries(st.text(min_size=1, max_size=6), _VALUE, max_size=6)


@settings(max_examples=80, deadline=None)
@given(st.lists(_EVENT, max_size=4))
def test_jsonl_means_what_json_dumps_sorted_means(events: list[dict[str, object]]) -> None:
    text = to_jsonl(events)
    assert text.endswith("\n") or not events
    lines = text.split("\n")[:-1]  # JSON Lines: \n only (U+0085 may be raw in a string)
    assert len(lines) == len(events)
    for line, e in zip(lines, events, strict=True):
        pairs = json.loads(line, object_pairs_hook=lambda kv: kv)
        keys = [k for k, _ in pairs]
        assert keys == sorted(keys)  # written sorted, as the C encoder did
        assert json.dumps(json.loads(line), sort_keys=True) == json.dumps(e, sort_keys=True)
    assert to_jsonl(events) == text  # deterministic


def test_jsonl_nested_and_odd_values_go_through_jsonable() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "Odd()"

    ev = {"event": "e", "nested": {1: [Odd()]}, "x": math.inf}
    assert to_jsonl([ev]) == '{"event":"e","nested":{"1":["Odd()"]},"x":Infinity}\n'

    @dataclasses.dataclass
    class Point:
        x: int

    when = datetime.date(2018, 2, 1)
    line = to_jsonl([{"event": "e", "p": Point(1), "d": when}])
    assert json.loads(line) == {"d": repr(when), "event": "e", "p": repr(Point(1))}


def test_events_are_built_by_a_structlog_bound_logger() -> None:
    t = Tracer(True, scenario="s")
    t.bind_step(vcpu=1, step=2)
    # the configured path: structlog's filtering bound logger with our
    # processor chain; the event dict is structlog's (context, keywords, event)
    assert isinstance(t._log, structlog.BoundLoggerBase)
    assert structlog.get_context(t._log) == {"scenario": "s", "vcpu": 1, "step": 2}
    t.emit("kvm_page_fault", ph="B", gpa="0x0")
    t.emit("hva_to_pfn", vcpu=3)  # a keyword overrides bound context, as in structlog
    assert t.events == [
        {
            "scenario": "s",
            "vcpu": 1,
            "step": 2,
            "ph": "B",
            "gpa": "0x0",
            "event": "kvm_page_fault",
            "seq": 0,
        },
        {"scenario": "s", "vcpu": 3, "step": 2, "event": "hva_to_pfn", "seq": 1},
    ]
    assert list(t.events[0]) == ["scenario", "vcpu", "step", "ph", "gpa", "event", "seq"]
