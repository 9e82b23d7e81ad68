"""Session recording end to end: `bottle relay --record FILE.cast`, played back by asciinema.

Every test runs the relay as a process on a real pty (the harness's ``Session``) with both
implementations (the ``impl`` fixture), then plays the file back with ``asciinema cat`` (the
PyPI package, 2.x) and compares with the bytes the test's terminal received: exactly equal,
except that bytes which are not UTF-8 play back as U+FFFD, one per maximal ill-formed
subsequence (Python's "replace" decoding, as asciinema's own recorder and a terminal show
them).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.relay import PY, RELAY_ARGV, Session, wait_until

# The fixture ``impl`` is in tests/relay/conftest.py.

Start = Callable[..., Session]


@pytest.fixture
def start(impl: str, tmp_path: Path) -> Iterator[Start]:
    """Start relay sessions (copy mode: recording needs it) for the implementation under test."""
    sessions: list[Session] = []

    def run(cmd: list[str], *relay_args: str, **kwargs: Any) -> Session:
        session = Session(cmd, impl=impl, tmp=tmp_path, relay_args=list(relay_args), **kwargs)
        sessions.append(session)
        return session

    yield run
    for session in sessions:
        session.close()


def py(code: str, *args: object) -> list[str]:
    return [PY, "-c", textwrap.dedent(code), *map(str, args)]


def asciinema_cat(cast: Path) -> bytes:
    """What ``asciinema cat`` prints for ``cast`` (no controlling terminal, UTF-8 stdout)."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "asciinema", "cat", str(cast)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        start_new_session=True,  # no /dev/tty: asciinema would put it in raw mode
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def load(cast: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    """The header and events, each line checked to be one whole JSON value, times in order."""
    lines = cast.read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == "", "the file ends with a whole line"
    header = json.loads(lines[0])
    events = [json.loads(line) for line in lines[1:-1]]
    times = [t for t, _, _ in events]
    assert times == sorted(times)
    return header, events


def shown(received: bytes) -> bytes:
    """What a terminal shows for ``received``, and so what the recording must play back."""
    return received.decode("utf-8", "replace").encode("utf-8")


# Writes pieces with pauses between them, so that each piece is its own read in the relay:
# UTF-8 sequences split across reads, escapes, NUL, and bytes that are not UTF-8 at all.
PIECES_CHILD = r"""
import os, sys, time
pieces = [b"plain \"quoted\" back\\slash\ttab\n", b"\x1b[1;31mred\x1b[0m ", b"\xe2", b"\x82",
          b"\xac euro ", b"\xf0\x9d", b"\x84\x9e clef ", b"\x00nul ", b"\xff\xfe bad ",
          b"\xed\xa0\x80 surrogate ", b"\xc0\x80 overlong ", b"\xe2\x82", b"| cut\n"]
for piece in pieces:
    os.write(1, piece)
    time.sleep(0.05)
"""


def test_playback_is_what_the_terminal_received(start: Start, tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    s = start(py(PIECES_CHILD), "--record", str(cast))
    assert s.wait() == 0, s.describe()
    received = s.output()
    assert b"\xff\xfe bad " in received  # the terminal got the raw bytes
    assert b"| cut\r\n" in received
    played = asciinema_cat(cast)
    assert played == shown(received)
    assert "€ euro 𝄞 clef \x00nul \ufffd\ufffd bad ".encode() in played
    header, events = load(cast)
    assert {k: header[k] for k in ("version", "width", "height")} == {
        "version": 2, "width": 80, "height": 24,
    }
    assert isinstance(header["timestamp"], int)
    assert header["title"] == os.path.basename(PY)
    assert set(header["env"]) <= {"TERM", "SHELL"}
    assert {kind for _, kind, _ in events} == {"o"}
    # The split euro sign went out whole in one event, not as two halves.
    assert any("€" in data for _, _, data in events)


RESIZE_CHILD = r"""
import fcntl, os, signal, struct, sys, termios, time
gate = sys.argv[1]
def show(*_):
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]
    os.write(1, b"size %dx%d\n" % (cols, rows))
signal.signal(signal.SIGWINCH, show)
show()
while not os.path.exists(gate):
    time.sleep(0.02)
"""


def test_window_changes_are_r_events_in_place(start: Start, tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    gate = tmp_path / "gate"
    s = start(py(RESIZE_CHILD, gate), "--record", str(cast), rows=30, cols=100)
    s.expect(b"size 100x30")
    s.terminal.resize(40, 120)
    s.expect(b"size 120x40")
    s.terminal.resize(50, 132)
    s.expect(b"size 132x50")
    gate.touch()
    assert s.wait() == 0, s.describe()
    assert asciinema_cat(cast) == shown(s.output())
    header, events = load(cast)
    assert (header["width"], header["height"]) == (100, 30)
    assert [data for _, kind, data in events if kind == "r"] == ["120x40", "132x50"]
    # Each r event comes before the output the child wrote at that size.
    flat = [(kind, data) for _, kind, data in events]
    text = "".join(data if kind == "o" else f"<{data}>" for kind, data in flat)
    assert text.index("<120x40>") < text.index("size 120x40")
    assert text.index("size 120x40") < text.index("<132x50>") < text.index("size 132x50")


KILLED_CHILD = r"""
import os
blob = ("é€𝄞" * 20000).encode()
os.write(1, blob)
os.write(1, "€".encode()[:2])  # half a sequence, then killed mid-write
os.kill(os.getpid(), 9)
"""


def test_a_child_killed_mid_write(start: Start, tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    s = start(py(KILLED_CHILD), "--record", str(cast))
    assert s.wait() == 128 + signal.SIGKILL, s.describe()
    received = s.output()
    assert received.endswith("€".encode()[:2])
    played = asciinema_cat(cast)
    assert played == shown(received)
    assert played.endswith("\ufffd".encode())


SILENT_READ_CHILD = r"""
import hashlib, os, sys, termios
attrs = termios.tcgetattr(0)
attrs[3] &= ~termios.ECHO  # a password prompt: no echo
termios.tcsetattr(0, termios.TCSANOW, attrs)
os.write(1, b"password: ")
line = sys.stdin.buffer.readline()
os.write(1, b"\nsha " + hashlib.sha256(line.strip()).hexdigest().encode() + b"\n")
"""


@pytest.mark.parametrize("with_input", [False, True], ids=["default", "record-input"])
def test_typed_input_is_recorded_only_with_record_input(
    start: Start, tmp_path: Path, with_input: bool
) -> None:
    cast = tmp_path / "s.cast"
    typed = b"hunter2-typed-secret"
    args = ["--record", str(cast), *(["--record-input"] if with_input else [])]
    s = start(py(SILENT_READ_CHILD), *args)
    s.expect(b"password: ")
    s.send(typed + b"\r")
    assert s.wait() == 0, s.describe()
    assert typed not in s.output()  # not echoed: the terminal never showed it
    assert asciinema_cat(cast) == shown(s.output())
    _, events = load(cast)
    typed_events = [data for _, kind, data in events if kind == "i"]
    if with_input:
        assert "".join(typed_events) == typed.decode() + "\r"
    else:
        assert typed_events == []
        assert typed not in cast.read_bytes()


def test_file_is_new_and_private(start: Start, tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    old = os.umask(0)  # inherited by the relay: the mode must not depend on it
    try:
        s = start(["true"], "--record", str(cast))
    finally:
        os.umask(old)
    assert s.wait() == 0, s.describe()
    assert stat.S_IMODE(cast.stat().st_mode) == 0o600
    # An existing file is refused before anything runs, and left as it was.
    marker = tmp_path / "ran"
    again = start(["touch", str(marker)], "--record", str(cast))
    assert again.wait() == 2, again.describe()
    assert "already exists" in again.text()
    assert not marker.exists()
    assert load(cast)[1] == []


@pytest.mark.parametrize("umask", ["0", "277"])
def test_the_file_is_private_whatever_the_umask(impl: str, tmp_path: Path, umask: str) -> None:
    # Issue 19: under umask 0277 a recording came out mode 0400, not the 0600 promised.
    cast = tmp_path / "s.cast"
    relay = [*RELAY_ARGV, "--record", str(cast), "--", "true"]
    s = Session([], impl=impl, tmp=tmp_path,
                argv=["sh", "-c", f'umask {umask}; exec "$@"', "sh", *relay])  # fmt: skip
    try:
        assert s.wait() == 0, s.describe()
    finally:
        s.close()
    assert stat.S_IMODE(cast.stat().st_mode) == 0o600
    assert load(cast)[0]["version"] == 2


@pytest.mark.parametrize("command", ["missing", "not-executable"])
def test_a_command_that_cannot_start_leaves_no_file(
    start: Start, tmp_path: Path, command: str
) -> None:
    # Issue 19: the header was written before the spawn failed, and the file left behind then
    # refused the retry ("already exists").
    program = tmp_path / command
    if command == "not-executable":
        program.write_text("#!/bin/sh\n")
        program.chmod(0o644)
    cast = tmp_path / "s.cast"
    for attempt in (1, 2):
        s = start([str(program)], "--record", str(cast))
        assert s.wait() == (127 if command == "missing" else 126), s.describe()
        assert "already exists" not in s.text(), f"attempt {attempt}: {s.describe()}"
        assert not cast.exists(), f"attempt {attempt}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record", "/proc/x.cast"], "directory '/proc' takes no new files"),
        (["--output", "direct", "--record", "x.cast"], "output='copy'"),
        (["--record-input"], "record_input needs a recording"),
        (["--record", ""], "empty"),
        (["--record", "/nonexistent-dir/x.cast"], "cannot create recording file"),
    ],
)
def test_recording_usage_errors(start: Start, args: list[str], message: str) -> None:
    s = start(["true"], *args)
    assert s.wait() == 2, s.describe()
    assert message in s.text(), s.describe()


def test_written_as_the_session_goes(start: Start, tmp_path: Path) -> None:
    # The events are in the file while the session runs; a relay killed outright leaves a
    # file that plays back up to there.
    cast = tmp_path / "s.cast"
    gate = tmp_path / "gate"
    child = py("import os, sys, time\nos.write(1, b'first words\\n')\n"
               "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n", gate)  # fmt: skip
    s = start(child, "--record", str(cast))
    s.expect(b"first words")
    assert wait_until(lambda: b"first words" in cast.read_bytes(), 10)
    os.kill(s.relay_pid, signal.SIGKILL)
    s.wait()
    assert asciinema_cat(cast) == b"first words\r\n"
    gate.touch()


def test_a_failing_disk_ends_the_recording_with_a_warning(impl: str, tmp_path: Path) -> None:
    # A file size limit (ulimit -f: 10 KiB) makes the recording's writes fail (EFBIG; Python
    # ignores SIGXFSZ) part-way: the session goes on to its end, the relay says the recording
    # is incomplete once the terminal is restored, and the file plays back whole events.
    # The first lines are on file before the rest comes: one event can hold all the output a
    # slow terminal let pile up (seen under load: an event past the limit, nothing played).
    cast, gate = tmp_path / "s.cast", tmp_path / "gate"
    child = [PY, "-c", textwrap.dedent("""
        import os, sys, time
        for i in range(10): os.write(1, b'line %04d\\n' % i)
        while not os.path.exists(sys.argv[1]): time.sleep(0.01)
        for i in range(10, 2000): os.write(1, b'line %04d\\n' % i)
        """), str(gate)]  # fmt: skip
    relay = [*RELAY_ARGV, "--record", str(cast), "--", *child]
    s = Session([], impl=impl, tmp=tmp_path,
                argv=["sh", "-c", 'ulimit -f 20; exec "$@"', "sh", *relay])  # fmt: skip
    try:
        assert wait_until(lambda: cast.exists() and b"line 0009" in cast.read_bytes(), 20)
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert b"line 1999\r\n" in s.output()
        assert f"the recording {cast} is incomplete (File too large)" in s.text(), s.describe()
        assert 0 < cast.stat().st_size <= 20 * 512
        load(cast)  # whole lines only
        played = asciinema_cat(cast)
        assert played and s.output().startswith(played)
    finally:
        s.close()
