"""Decision traces: structlog set-up, capture and exporters.

Each run builds its own logger with :func:`structlog.wrap_logger` (no global
``configure()``), so matrix cells and tests never share configuration.  Events
carry a step counter (``seq``), never a clock: the same run gives the same
trace, byte for byte.

Hot-path callers write ``if tr.enabled: tr.emit("event", key=value)`` so that
disabled tracing costs one attribute test.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

# Chrome trace-event phases we produce.
BEGIN = "B"
END = "E"
INSTANT = "i"


class _Capture:
    """The wrapped logger: the processor chain ends by handing it the event
    dict as its one argument (``((event_dict,), {})``), and its ``info`` is
    the run's ``events.append``, so the dict structlog built for the event
    is stored as is: no copy, no ``DropEvent`` per event."""

    __slots__ = ("info", "msg")

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.info = self.msg = events.append


_trace_logger_class: Any = None


def _trace_logger() -> Any:
    """The wrapper class for recording runs, built on first use so that a
    process that never records a trace never imports structlog (~0.1 s)."""
    global _trace_logger_class
    if _trace_logger_class is None:
        import structlog

        base: Any = structlog.make_filtering_bound_logger(logging.DEBUG)

        class _TraceLogger(base):  # type: ignore[misc, valid-type]
            """structlog's filtering bound logger at DEBUG, whose ``info``
            calls ``_process_event`` (the entry structlog documents for
            custom wrapper classes: it builds the event dict from the bound
            context and the call's keywords and runs the processor chain) and
            hands the result to the wrapped logger itself, without the
            generic proxy in between (level dispatch, a second keyword
            repacking, ``DropEvent`` handling: the chain here never drops)."""

            def info(self, event: str, **kw: Any) -> Any:
                args, kwargs = self._process_event("info", event, kw)
                return self._logger.info(*args, **kwargs)

        _trace_logger_class = _TraceLogger
    return _trace_logger_class


def _no_event(event: str, **kw: Any) -> None:
    """``emit`` of a tracer that records nothing."""


class Tracer:
    """One run's trace.

    :param enabled: record events; when false :attr:`emit` is a no-op and
        callers should not even build the arguments.
    :param context: bound to every event (scenario, arch, strategy).

    ``emit(event, **kw)`` records one decision (``ph`` may be ``"B"``/``"E"``
    for slices).  It *is* the ``info`` method of the run's structlog bound
    logger (``_TraceLogger``), re-fetched whenever :meth:`bind_step` binds
    context: no wrapper frame per event.  With tracing off it is a no-op
    function and no logger is built (structlog is not even imported).
    """

    __slots__ = ("_log", "_seq", "_step_ctx", "emit", "enabled", "events")

    def __init__(self, enabled: bool = False, **context: Any) -> None:
        self.enabled = enabled
        self.events: list[dict[str, Any]] = []
        self._seq = 0
        self._step_ctx: dict[str, Any] = {}
        if not enabled:  # nothing to record: no logger at all
            self._log: Any = None
            self.emit: Callable[..., Any] = _no_event
            return
        import structlog

        self._log = structlog.wrap_logger(
            _Capture(self.events),
            processors=[self._number],
            wrapper_class=_trace_logger(),
            context_class=dict,
        ).bind(**context)
        self.emit = self._log.info

    def _number(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> tuple[tuple[MutableMapping[str, Any]], dict[str, Any]]:
        # structlog built this dict afresh for this event (a copy of the bound
        # context updated with the call's keywords): number it and hand it to
        # the capturing logger as its one positional argument, no second copy.
        event_dict["seq"] = self._seq
        self._seq += 1
        return (event_dict,), {}

    def bind_step(self, **ctx: Any) -> None:
        """Bind per-step context (vcpu, step) once per step, not per event."""
        if self.enabled:
            self._step_ctx = ctx
            self._log = self._log.bind(**ctx)
            self.emit = self._log.info

    @property
    def step(self) -> int | None:
        """The step last bound (recorded only when enabled), or None."""
        step = self._step_ctx.get("step")
        return None if step is None else int(step)

    def last(self) -> dict[str, Any] | None:
        """The most recent event, or None."""
        return self.events[-1] if self.events else None


DISABLED = Tracer(False)
"""A tracer that records nothing, for callers with no run (tests of the host model)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


# dataclasses and datetimes go to ``default`` (their repr) as the standard
# library path writes them; an Enum member is written as its value
_LINE_OPTS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def _nonfinite(value: Any) -> bool:
    """Does ``value`` hold a NaN or an infinity (which orjson writes as null)?"""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    return False


def _slow_line(event: dict[str, Any]) -> bytes:
    """The line for an event orjson cannot write as the trace means it: an
    integer beyond 64 bits, a dict key that is not a string, a NaN or an
    infinity (written ``NaN`` / ``Infinity``, as Python's json does)."""
    text = json.dumps(
        _jsonable(event), sort_keys=True, separators=(",", ":")
    )  # ensure_ascii: a lone surrogate (which orjson refuses too) stays writable
    return text.encode("ascii") + b"\n"


def _line(event: dict[str, Any]) -> bytes:
    """One event as a JSON line: keys sorted, compact separators, UTF-8;
    any value JSON has no type for is written as its ``repr``."""
    try:
        line = orjson.dumps(event, default=repr, option=_LINE_OPTS)
    except TypeError:  # orjson.JSONEncodeError: big int, non-string key
        return _slow_line(event)
    if b"null" in line and _nonfinite(event):
        return _slow_line(event)
    return line


def to_jsonl_bytes(events: Iterable[dict[str, Any]]) -> bytes:
    """JSON Lines, one event per line, keys sorted (deterministic), as
    written to a ``.jsonl`` trace file (UTF-8).  Encoded by orjson, about
    four times faster per event than the standard library's C encoder;
    appended to one buffer as it goes, since holding a separate object per
    line until a final join costs more than the encoding here (issue 11:
    tracing on within 3x of off)."""
    out = bytearray()
    for e in events:
        out += _line(e)
    return bytes(out)


def to_jsonl(events: Iterable[dict[str, Any]]) -> str:
    """:func:`to_jsonl_bytes` as text."""
    return to_jsonl_bytes(events).decode("utf-8")


def to_chrome(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Chrome trace-event JSON (Perfetto opens it).

    One track (tid) per vcpu; host events and verdicts, which belong to no
    vcpu, go on track 0 named ``host``.  ``ts`` is the event's sequence number
    in microseconds, so slices nest exactly as the decisions did.
    """
    out: list[dict[str, Any]] = []
    tids: dict[Any, int] = {}
    for e in events:
        vcpu = e.get("vcpu")
        key = "host" if vcpu is None else vcpu
        if key not in tids:
            tid = 0 if vcpu is None else int(vcpu) + 1
            tids[key] = tid
            out.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": 1,
                    "tid": tid,
                    "args": {"name": "host" if key == "host" else f"vcpu{vcpu}"},
                }
            )
        ph = e.get("ph", INSTANT)
        rec: dict[str, Any] = {
            "name": e["event"],
            "ph": ph,
            "ts": e["seq"],
            "pid": 1,
            "tid": tids[key],
            "cat": e.get("cat", "kvmsim"),
            "args": {
                k: _jsonable(v) for k, v in e.items() if k not in ("event", "ph", "seq", "cat")
            },
        }
        if ph == INSTANT:
            rec["s"] = "t"
        out.append(rec)
    return {"traceEvents": out, "displayTimeUnit": "ns"}


def write_trace(path: Path, events: list[dict[str, Any]], what: str = "--trace") -> None:
    """Write ``events`` to ``path``: ``.jsonl`` → JSON Lines, ``.json`` → Chrome
    (atomically; a path that cannot be written is a one-line error naming
    *what*, the option that gave it)."""
    from kvmsim.outfile import atomic_write

    with atomic_write(path, what, binary=True) as f:
        if path.suffix == ".json":
            f.write((json.dumps(to_chrome(events), sort_keys=True, indent=None) + "\n").encode())
        else:
            write = f.write  # line by line: no object per line kept alive
            for e in events:
                write(_line(e))
