"""Traces: per-run capture, determinism, exporters."""

import json

from kvmsim.trace import Tracer, to_chrome, to_jsonl


def _sample() -> Tracer:
    t = Tracer(True, scenario="s", arch="a", strategy="x")
    t.bind_step(vcpu=0, step=0)
    t.emit("kvm_page_fault", ph="B", gpa="0x0")
    t.emit("hva_to_pfn", pfn="0x10")
    t.emit("kvm_page_fault", ph="E")
    t.bind_step(vcpu=None, step=1)
    t.emit("host_event", do="munmap")
    return t


def test_disabled_tracer_records_nothing() -> None:
    t = Tracer(False, scenario="s")
    t.emit("x", a=1)
    assert t.events == []


def test_events_carry_bound_context_and_sequence() -> None:
    ev = _sample().events
    assert [e["seq"] for e in ev] == list(range(len(ev)))
    assert ev[1]["event"] == "hva_to_pfn"
    assert ev[1]["scenario"] == "s" and ev[1]["vcpu"] == 0 and ev[1]["step"] == 0
    assert ev[3]["step"] == 1


def test_two_tracers_do_not_share_configuration() -> None:
    a = Tracer(True, scenario="a")
    b = Tracer(True, scenario="b")
    a.emit("e")
    b.emit("e")
    assert a.events[0]["scenario"] == "a" and b.events[0]["scenario"] == "b"
    assert a.events[0]["seq"] == 0 and b.events[0]["seq"] == 0


def test_jsonl_is_deterministic() -> None:
    assert to_jsonl(_sample().events) == to_jsonl(_sample().events)
    lines = to_jsonl(_sample().events).splitlines()
    assert json.loads(lines[1])["event"] == "hva_to_pfn"


def check_chrome(doc: dict) -> None:
    """Well-formed Chrome trace events: required fields, slices nested per track."""
    assert isinstance(doc["traceEvents"], list)
    stacks: dict[int, list[str]] = {}
    last_ts: dict[int, int] = {}
    for e in doc["traceEvents"]:
        for f in ("name", "ph", "pid", "tid"):
            assert f in e, (f, e)
        if e["ph"] == "M":
            continue
        assert isinstance(e["ts"], int)
        assert e["ts"] >= last_ts.get(e["tid"], 0)
        last_ts[e["tid"]] = e["ts"]
        st = stacks.setdefault(e["tid"], [])
        if e["ph"] == "B":
            st.append(e["name"])
        elif e["ph"] == "E":
            assert st and st[-1] == e["name"], "unbalanced slice"
            st.pop()
        else:
            assert e["ph"] == "i"
            assert e["s"] in ("t", "p", "g")
    assert all(not s for s in stacks.values()), "unclosed slice"


def test_chrome_export_is_well_formed() -> None:
    doc = to_chrome(_sample().events)
    check_chrome(doc)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M"}
    assert names == {"vcpu0", "host"}
