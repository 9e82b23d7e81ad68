"""The holder's loop itself, both twins: its constants, its arguments, and one client served
in process (a socketpair-free listening socket and a real pty)."""

from __future__ import annotations

import os
import socket
import threading
import tty
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from harness.sessions import Client, loop_module, native_core

from bottle import _hub_py
from bottle import _sessionwire as wire

HUB_CONSTANTS = ("EV_CLIENTS", "EV_SIGNAL", "EV_CHILD", "DEFAULT_HISTORY", "MIN_HISTORY",
                 "MAX_CLIENTS", "STALL_MS", "STALL_PROGRESS", "TWITCH_MS")  # fmt: skip


@pytest.fixture(params=["native", "pure"])
def hubmod(request: pytest.FixtureRequest) -> ModuleType:
    return loop_module(request.param, _hub_py)


@pytest.fixture
def pty_and_socket(tmp_path: Path) -> Iterator[tuple[int, int, socket.socket, str]]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.setblocking(False)
    try:
        yield master, slave, listener, path
    finally:
        listener.close()
        os.close(master)
        os.close(slave)


def test_native_protocol_numbers_are_the_protocols() -> None:
    mod = native_core()
    if mod is None:
        pytest.skip("native extension not built")
    for name, value in mod.WIRE.items():
        assert getattr(wire, name) == value, name
    for name in HUB_CONSTANTS:
        assert getattr(mod, name) == getattr(_hub_py, name), name


def test_arguments_checked(hubmod: ModuleType, pty_and_socket: tuple) -> None:
    master, _, listener, _ = pty_and_socket
    fd = listener.fileno()
    with pytest.raises(ValueError, match="history must be at least 4096 bytes"):
        hubmod.Hub(master, fd, history=4095)
    with pytest.raises(ValueError, match="stall_ms must be positive"):
        hubmod.Hub(master, fd, stall_ms=0)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError, match="master_fd"):
            hubmod.Hub(r, fd)
    finally:
        os.close(r)
        os.close(w)
    hub = hubmod.Hub(master, fd)
    with pytest.raises(ValueError, match="flush_ms must not be negative"):
        hub.finish(0, -1)
    with pytest.raises(ValueError, match="status 65536 out of range"):
        hub.finish(65536, 0)
    with pytest.raises(ValueError, match="must not be negative"):
        hub.drain(-1, 0)


def test_in_process_client(hubmod: ModuleType, pty_and_socket: tuple) -> None:
    # The hub in a thread, the test as both the program (the pty's slave) and the client.
    master, slave, listener, path = pty_and_socket
    tty.setraw(slave)
    hub = hubmod.Hub(master, listener.fileno(), history=8192)
    os.write(slave, b"before")
    events: list[int] = []

    def loop() -> None:
        # Until the client has come and gone.
        while not events or hub.clients != (0, 0, 0):
            events.append(hub.run())

    client = Client.raw(path)
    client.send(wire.attach(24, 80))
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    client.expect(b"before")
    client.keys(b"typed")
    got = b""
    while len(got) < 5:
        try:
            got += os.read(slave, 64)
        except BlockingIOError:
            continue
    assert got == b"typed"
    assert hub.clients == (1, 0, 0)
    assert hub.total == 6 and hub.history() == b"before"
    with pytest.raises(RuntimeError, match="already running"):
        hub.drain(0, 0)
    client.detach()
    client.wait_eof()
    thread.join(10)
    assert not thread.is_alive()
    assert events == [hubmod.EV_CLIENTS, hubmod.EV_CLIENTS]
    hub.close()


def test_drain_reads_on_after_eio(hubmod: ModuleType, pty_and_socket: tuple) -> None:
    # As the relay's drain (tests/relay/test_relay_core.py): Linux's EIO may come before the
    # last output has reached the master. The first drain meets EIO; output written after it
    # (through the slave opened again by name) must still be read by the next drain.
    _, _, listener, _ = pty_and_socket
    master, slave = os.openpty()
    os.set_blocking(master, False)
    name = os.ttyname(slave)
    tty.setraw(slave)
    hub = hubmod.Hub(master, listener.fileno(), history=8192)
    try:
        os.write(slave, b"early ")
        os.close(slave)
        hub.drain(100, 5000)
        assert hub.history() == b"early "
        late = os.open(name, os.O_RDWR | os.O_NOCTTY)
        os.write(late, b"tail")
        os.close(late)
        hub.drain(100, 5000)
        assert hub.history() == b"early tail"
    finally:
        hub.close()
        os.close(master)
