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
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

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


_FilteringAtDebug: Any = structlog.make_filtering_bound_logger(logging.DEBUG)


class _TraceLogger(_FilteringAtDebug):  # type: ignore[misc]
    """structlog's filtering bound logger at DEBUG, whose ``info`` calls
    ``_process_event`` (the entry structlog documents for custom wrapper
    classes: it builds the event dict from the bound context and the call's
    keywords and runs the processor chain) and hands the result to the
    wrapped logger itself, without the generic proxy in between (level
    dispatch, a second keyword repacking, ``DropEvent`` handling: the
    chain here never drops)."""

    def info(self, event: str, **kw: Any) -> Any:
        args, kwargs = self._process_event("info", event, kw)
        return self._logger.info(*args, **kwargs)


class Tracer:
    """One run's trace.

    :param enabled: record events; when false :attr:`emit` is a no-op and
        callers should not even build the arguments.
    :param context: bound to every event (scenario, arch, strategy).

    ``emit(event, **kw)`` records one decision (``ph`` may be ``"B"``/``"E"``
    for slices).  It *is* the ``info`` method of the run's structlog bound
    logger (:class:`_TraceLogger`; with tracing off a
    ``make_filtering_bound_logger(CRITICAL)`` one, whose ``info`` is
    structlog's no-op), re-fetched whenever :meth:`bind_step` binds
    context: no wrapper frame per event.
    """

    __slots__ = ("_log", "_seq", "_step_ctx", "emit", "enabled", "events")

    def __init__(self, enabled: bool = False, **context: Any) -> None:
        self.enabled = enabled
        self.events: list[dict[str, Any]] = []
        self._seq = 0
        self._step_ctx: dict[str, Any] = {}
        self._log = structlog.wrap_logger(
            _Capture(self.events),
            processors=[self._number],
            wrapper_class=(
                _TraceLogger if enabled else structlog.make_filtering_bound_logger(logging.CRITICAL)
            ),
            context_class=dict,
        ).bind(**context)
        self.emit: Callable[..., Any] = self._log.info

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


_SCALARS = (str, int, float, bool, type(None))
_ENCODER = json.JSONEncoder(sort_keys=True)


def _make_encode() -> Callable[[Any], str]:
    """``_ENCODER.encode`` for one event, without rebuilding the C encoder
    on every call as ``JSONEncoder.encode`` does: the same C encoder the
    json module would make for ``_ENCODER`` (same separators, sorted keys,
    ``ensure_ascii``, NaN allowed), built once.  Events are trees (no
    cycles), so no circular-reference markers.  Falls back to
    ``_ENCODER.encode`` where the C accelerator is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    try:
        c_enc = make(
            None,
            _ENCODER.default,
            json.encoder.encode_basestring_ascii,
            None,
            _ENCODER.key_separator,
            _ENCODER.item_separator,
            True,
            False,
            True,
        )
    except TypeError:  # another C signature: the documented path
        return _ENCODER.encode
    join = "".join

    def encode(event: Any) -> str:
        return join(c_enc(event, 0))

    return encode


_encode = _make_encode()


def _flat(event: dict[str, Any]) -> bool:
    """Does ``json`` encode this event exactly as ``_jsonable`` would? True
    when every value is a scalar or a list/tuple of scalars (most events):
    then nothing needs ``repr`` and no nested dict has non-string keys."""
    for v in event.values():
        if isinstance(v, _SCALARS):
            continue
        if isinstance(v, (list, tuple)) and all(isinstance(x, _SCALARS) for x in v):
            continue
        return False
    return True


def to_jsonl(events: Iterable[dict[str, Any]]) -> str:
    """JSON Lines, one event per line, keys sorted (deterministic)."""
    enc = _encode
    return "".join((enc(e) if _flat(e) else enc(_jsonable(e))) + "\n" for e in events)


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


def write_trace(path: Path, events: list[dict[str, Any]]) -> None:
    """Write ``events`` to ``path``: ``.jsonl`` → JSON Lines, ``.json`` → Chrome."""
    if path.suffix == ".json":
        text = json.dumps(to_chrome(events), sort_keys=True, indent=None) + "\n"
    else:
        text = to_jsonl(events)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
