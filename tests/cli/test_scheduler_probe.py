"""Issue 22.9: ``--scheduler`` at something that is not a dask scheduler is
one line and exit 2 within a bounded time: an HTTP server (which waits for a
request: dask would wait for ever), a service that talks first (whose text
dask would read as a frame length: MemoryError), a closed port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kvmsim import matrix

from .conftest import ONE_CELL, run_cli


def serve(greeting: bytes | None) -> Iterator[int]:
    """A TCP server on localhost: sends *greeting* on accept (None: nothing,
    as an HTTP server waiting for a request), then holds the connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def loop() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            if greeting:
                conn.sendall(greeting)
            held.append(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


@pytest.fixture
def silent() -> Iterator[int]:
    yield from serve(None)


@pytest.fixture
def talker() -> Iterator[int]:
    yield from serve(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix, "SCHEDULER_TIMEOUT", 1.0)


@pytest.mark.parametrize(
    ("server", "why"),
    [
        ("silent", "no dask handshake within 1 s (not a dask scheduler?)"),
        ("talker", "not a dask handshake (not a dask scheduler?)"),
        ("closed_port", "cannot connect: Connection refused"),
    ],
)
def test_not_a_scheduler_is_one_line_exit_2(
    server: str, why: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed")
    port = request.getfixturevalue(server)
    t0 = time.monotonic()
    code, _, err = run_cli([*ONE_CELL, "--scheduler", f"tcp://127.0.0.1:{port}"], capsys)
    assert time.monotonic() - t0 < 10
    assert code == 2
    assert err.startswith(f"kvmsim: error: --scheduler tcp://127.0.0.1:{port}: ")
    assert why in err and err.count("\n") == 1


def test_a_malformed_address_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("distributed")
    code, _, err = run_cli([*ONE_CELL, "--scheduler", "localhost"], capsys)
    assert code == 2 and "expected tcp://HOST:PORT" in err
