"""The session holder, native and pure: real holder processes, real sockets, a test program on
the holder's pty, and the test as the client (harness.sessions.Client).

What a client sees (the frames of `bottle._sessionwire`), what survives a detach, what is
dropped and said so, who may type and resize, and what is left when a session ends or its
holder is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from harness.relay import alive, context_switches
from harness.sessions import (
    Client,
    Sessions,
    blob_program,
    kill_holder,
    size_report,
    wait_for,
    wait_gone,
)

from bottle import _sessionwire as wire
from bottle import sessions
from bottle.errors import InvalidInputError, SessionEndedError, SessionExistsError


def started(client: Client) -> int:
    """Wait for the program's first size report; the output length after it."""
    return client.expect(b";")


def test_type_and_read(holders: Sessions) -> None:
    s = holders.start(size=(30, 100))
    c = Client.attach(s, size=(30, 100))
    c.until(lambda g: g.attached is not None, "ATTACHED")
    assert c.got.attached == (wire.VERSION, 0, 30, 100, 0)
    c.expect(size_report(30, 100))
    c.keys(b"hello")
    c.expect(b"KhKeKlKlKo")
    assert c.got.dropped == [] and c.got.errors == []
    info = sessions.find_session(s.name).info()
    assert (info.state, info.clients, info.writers, info.watchers) == ("running", 1, 1, 0)


def test_output_while_detached_is_all_there_byte_exact(holders: Sessions, tmp_path: Path) -> None:
    data, env_extra, done = blob_program(tmp_path, 200_000)
    s = holders.start(history=1 << 20, env_extra=env_extra)
    first = Client.attach(s)
    started(first)
    before = bytes(first.got.output)
    first.detach()
    first.wait_eof()
    # Now detached: the program is told (by a second client that reads nothing) to print.
    quiet = Client.attach(s, readonly=False, since=wire.SINCE_NOW)
    quiet.keys(b"OT")
    wait_for(done.exists, "the program's output to end")
    quiet.close()
    again = Client.attach(s)
    again.expect(b"KT")
    expected = before + b"KO" + data + b"KT"
    assert bytes(again.got.output) == expected
    assert again.got.attached is not None and again.got.attached[4] == 0
    assert again.got.dropped == []
    # Resuming where the first client stopped gives exactly what it missed.
    resumed = Client.attach(s, since=len(before))
    resumed.expect(b"KT")
    assert bytes(resumed.got.output) == b"KO" + data + b"KT"
    assert resumed.got.attached is not None and resumed.got.attached[4] == len(before)


def test_overflow_drops_the_oldest_and_says_how_much(holders: Sessions, tmp_path: Path) -> None:
    history = 64 * 1024
    data, env_extra, done = blob_program(tmp_path, 300_000)
    s = holders.start(history=history, env_extra=env_extra)
    first = Client.attach(s)
    started(first)  # raw now: keys typed before would have been flushed
    first.keys(b"OT")
    first.close()  # gone before the output: it holds nothing back
    wait_for(done.exists, "the program's output to end")
    stream_len = len(size_report(24, 80)) + 2 + len(data) + 2
    late = Client.attach(s)
    late.until(lambda g: len(g.output) >= history, "the kept output")
    assert late.got.dropped == [(0, stream_len - history)]
    assert late.got.attached is not None and late.got.attached[4] == stream_len - history
    assert bytes(late.got.output) == (b"KO" + data + b"KT")[-history:]
    frames = [k for k, _ in late.got.frames]
    assert frames[:2] == [wire.ATTACHED, wire.DROPPED]


def test_two_writers_and_a_watcher(holders: Sessions) -> None:
    s = holders.start(size=(24, 80))
    a = Client.attach(s, size=(30, 100))
    a.expect(size_report(30, 100))  # attaching as a writer: its size wins
    b = Client.attach(s, size=(40, 120))
    b.expect(size_report(40, 120))
    w = Client.attach(s, size=(10, 20), readonly=True)
    w.until(lambda g: g.attached is not None, "ATTACHED")
    assert w.got.attached is not None and w.got.attached[1] == wire.READONLY
    # Typing makes a writer the most recent: its size comes back.
    mark = len(a.got.output)
    a.keys(b"a")
    a.expect(size_report(30, 100) + b"Ka", mark)
    # The watcher's keys and sizes change nothing; what it sees is what the writers see.
    w.keys(b"w")
    w.resize(5, 5)
    mark = len(b.got.output)
    b.keys(b"b")
    b.expect(size_report(40, 120) + b"Kb", mark)
    b.sync()
    w.until(lambda g: g.output == b.got.output, "the watcher to see the writers' output")
    assert b"Kw" not in b.got.output and size_report(5, 5) not in b.got.output
    info = s.info()
    assert (info.clients, info.writers, info.watchers) == (3, 2, 1)
    # The writer that was last active leaves: the other one's size is the program's again.
    mark = len(w.got.output)
    b.detach()
    w.expect(size_report(30, 100), mark)
    wait_for(lambda: s.info().clients == 2, "the listing to count 2 clients")


def test_redraw_twitches_the_size(holders: Sessions) -> None:
    s = holders.start(size=(24, 80))
    a = Client.attach(s, size=(24, 80))
    started(a)
    mark = len(a.got.output)
    watcher = Client.attach(s, readonly=True, redraw=True, since=wire.SINCE_NOW)
    # One row less, then back: the program sees two window changes and repaints.
    a.expect(size_report(23, 80) + size_report(24, 80), mark)
    watcher.expect(size_report(23, 80) + size_report(24, 80))
    mark = len(a.got.output)
    a.redraw()
    a.expect(size_report(23, 80) + size_report(24, 80), mark)


def test_exit_status_kept_and_screen_on_later_attach(holders: Sessions) -> None:
    s = holders.start(env_extra={"PROG_STATUS": "7"})
    c = Client.attach(s)
    started(c)
    c.keys(b"X")
    c.until(lambda g: g.exit_status is not None, "EXIT")
    assert c.got.exit_status == 7
    assert c.got.output.endswith(b"KX")
    c.wait_eof()
    assert s.wait(10) == 7
    info = sessions.find_session(s.name).info()
    assert (info.state, info.exit_status, info.clients) == ("exited", 7, 0)
    with pytest.raises(SessionEndedError) as ended:
        sessions.connect(s.name)
    assert ended.value.status == 7
    assert ended.value.screen == bytes(c.got.output)
    assert not os.path.exists(s.socket_path)
    s.remove()
    assert sessions.list_sessions() == []
    assert holders.leftovers() == []


def test_losing_a_client_never_ends_the_session(holders: Sessions, tmp_path: Path) -> None:
    s = holders.start()
    # The program is ready (raw, no echo) before the client below types: a key typed before
    # its setraw (TCSAFLUSH) would be echoed and thrown away.
    ready = Client.attach(s)
    ready.expect(size_report(24, 80))
    ready.close()
    # A client in a process of its own, killed outright mid-session.
    script = (
        "import socket, sys, time\n"
        "from bottle import sessions\n"
        "from bottle import _sessionwire as wire\n"
        "sock = sessions.connect(sys.argv[1])\n"
        "for f in wire.keys(b'z'): sock.sendall(f)\n"
        "print('attached', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [holders.python, "-c", script, s.name],
        stdout=subprocess.PIPE,
        env=holders.env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"attached\n"
    proc.kill()
    proc.wait()
    wait_for(lambda: s.info().clients == 0, "the holder to notice the client is gone")
    assert s.info().state == "running"
    c = Client.attach(s)
    c.expect(b"Kz")
    c.sync()


def test_holder_killed_outright_leaves_nothing_running(holders: Sessions) -> None:
    s = holders.start()
    c = Client.attach(s)
    started(c)
    child = sessions.find_session(s.name)._dir.read_json("state.json")["child_pid"]  # type: ignore[index]
    assert alive(child)
    holder = kill_holder(s)
    wait_gone(holder)
    # The pty's master went with the holder: the program is hung up and ends.
    wait_gone(child)
    assert holders.leftovers() == []
    info = s.info()
    assert (info.state, info.exit_status, info.clients) == ("lost", None, 0)
    c.wait_eof()
    with pytest.raises(SessionEndedError) as ended:
        sessions.connect(s.name)
    assert ended.value.status is None
    s.remove()


def test_holder_passes_termination_signals_on(holders: Sessions) -> None:
    s = holders.start()
    c = Client.attach(s)
    started(c)
    s.signal(signal.SIGTERM)
    c.until(lambda g: g.exit_status is not None, "EXIT")
    assert c.got.exit_status == 128 + signal.SIGTERM
    assert s.wait(10) == 128 + signal.SIGTERM


def test_end_a_program_that_takes_sigterm(holders: Sessions) -> None:
    s = holders.start()
    c = Client.attach(s)
    started(c)
    assert s.end() == 128 + signal.SIGTERM  # the holder is gone when it returns
    assert not s.running()
    c.until(lambda g: g.exit_status is not None, "EXIT")
    assert s.end() == 128 + signal.SIGTERM  # an ended session is left as it is
    assert holders.leftovers() == []
    s.remove()


def test_end_kills_the_holder_of_a_program_that_ignores_sigterm(holders: Sessions) -> None:
    # Its program ignores SIGTERM: after the grace its holder is killed, and the pty's hang-up
    # ends the program (and the child it waits for).
    s = holders.start(["/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
    c = Client.attach(s)
    c.expect(b"ready")
    with pytest.raises(InvalidInputError, match="grace must be a number of seconds, 0 or more"):
        s.end(-1)
    with pytest.raises(InvalidInputError, match="not '1'"):
        s.end("1")  # type: ignore[arg-type]
    assert s.running()  # bad input ended nothing
    began = time.monotonic()
    assert s.end(0.5) is None
    assert time.monotonic() - began >= 0.5  # the grace was given
    assert holders.leftovers() == []
    info = s.info()
    assert (info.state, info.exit_status) == ("lost", None)
    c.wait_eof()
    s.remove()


def test_a_stuck_client_stops_holding_the_output_back(holders: Sessions, tmp_path: Path) -> None:
    # A client that reads nothing holds the program's output back for STALL_MS at most; then
    # the output goes on, whole, to a client that keeps up, and the stuck one is told what it
    # missed when it reads again.
    history = 64 * 1024
    data, env_extra, _ = blob_program(tmp_path, 1_000_000)
    s = holders.start(history=history, env_extra=env_extra)
    stuck = Client.attach(s, since=wire.SINCE_NOW)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    keeping_up = Client.attach(s)
    start = started(keeping_up)
    keeping_up.keys(b"OT")
    t0 = time.monotonic()
    keeping_up.expect(b"KT", start, timeout=30)
    assert time.monotonic() - t0 >= 1.0  # it did wait for the stuck one, for a while
    assert bytes(keeping_up.got.output[start:]) == b"KO" + data + b"KT"
    assert keeping_up.got.dropped == []
    stuck.expect(b"KT", timeout=30)
    got = stuck.got
    assert len(got.dropped) == 1
    at, count = got.dropped[0]
    assert got.attached is not None and keeping_up.got.attached is not None
    assert keeping_up.got.attached[4] == 0
    full = bytes(keeping_up.got.output[got.attached[4] :])
    assert bytes(got.output[:at]) == full[:at]
    assert bytes(got.output[at:]) == full[at + count :]


def test_protocol_errors_are_refused_and_the_session_goes_on(holders: Sessions) -> None:
    s = holders.start()
    bad = Client.raw(s.socket_path)
    bad.send(wire.frame(wire.KEYS, b"rm -rf /"))
    bad.wait_eof()
    assert bad.got.errors == ["the first frame must be ATTACH"]
    old = Client.raw(s.socket_path)
    old.send(wire.frame(wire.ATTACH, bytes([9, 0, 0, 24, 0, 80]) + bytes(8)))
    old.wait_eof()
    assert old.got.errors == ["protocol version 9 is not supported (this holder: 1)"]
    big = Client.attach(s)
    started(big)
    big.send(wire.header(wire.KEYS, wire.MAX_INPUT + 1))
    big.wait_eof()
    assert big.got.errors == [f"frame of {wire.MAX_INPUT + 1} bytes (limit {wire.MAX_INPUT})"]
    c = Client.attach(s)
    c.sync()
    assert b"rm -rf" not in c.got.output


def test_idle_holder_never_wakes(holders: Sessions) -> None:
    s = holders.start()
    c = Client.attach(s)
    started(c)
    c.detach()
    c.wait_eof()
    pid = s.pid
    assert pid is not None
    wait_for(lambda: s.info().clients == 0, "the detach")
    time.sleep(0.2)
    before = context_switches(pid)
    time.sleep(1.0)
    assert context_switches(pid) - before == 0


def test_names(holders: Sessions) -> None:
    a = holders.start(name="work")
    with pytest.raises(SessionExistsError, match="'work' exists already"):
        holders.start(name="work")
    b = holders.start(machine="work")  # a default name steps aside
    assert (a.name, b.name) == ("work", "work-2")
    assert [i.name for i in sessions.list_sessions()] == ["work", "work-2"]
    assert [i.machine for i in sessions.list_sessions()] == [None, "work"]


def test_a_program_that_cannot_run_leaves_nothing(holders: Sessions, runtime: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        holders.start(["no-such-program-here"])
    assert missing.value.filename == "no-such-program-here"
    with pytest.raises(PermissionError):
        holders.start([str(runtime)])  # a directory: exec fails in the holder's child
    assert sessions.list_sessions() == []
    assert holders.leftovers() == []
