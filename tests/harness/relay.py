"""Harness for the relay tests: the test plays the user's terminal (harness.terminal) on a real pty.

The relay runs as ``python -m bottle.relay -- CMD…`` with the slave of a fresh pty as its
stdin, stdout and stderr and as its controlling terminal; the test keeps the master (what a
terminal emulator holds) and a second descriptor of the slave, through which it inspects the
termios state and file status flags the relay leaves behind. The fixtures ``impl``, ``mode``
and ``spawn`` are in tests/relay/conftest.py.  Every process a session starts
carries a unique marker in its environment, so the test can find (and clean up) every
descendant, including ones the relay should have ended.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.terminal import (  # re-exported: the relay tests take them from here
    Terminal,
    get_winsize,
    is_canonical,
    set_winsize,
    wait_until,
)

__all__ = ["Terminal", "get_winsize", "is_canonical", "set_winsize", "wait_until"]

PY = sys.executable
RELAY_ARGV = (PY, "-m", "bottle.relay")
IMPLEMENTATIONS = ("native", "pure")
OUTPUTS = ("copy", "direct")
MARK_VAR = "BOTTLE_TEST_MARK"
DEFAULT_TIMEOUT = 20.0


# --------------------------------------------------------------------------- implementations


def implementation_env(impl: str) -> dict[str, str]:
    """Environment selecting one relay implementation through the documented variables."""
    env = dict(os.environ)
    env.pop("BOTTLE_NO_EXTENSIONS", None)
    env.pop("BOTTLE_REQUIRE_EXTENSION", None)
    if impl == "native":
        env["BOTTLE_REQUIRE_EXTENSION"] = "1"
    elif impl == "pure":
        env["BOTTLE_NO_EXTENSIONS"] = "1"
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return env


def native_built() -> bool:
    """Whether the compiled extension is present in the installed package."""
    return importlib.util.find_spec("bottle._ptyrelay") is not None


@functools.cache
def reported_implementation(impl: str) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of asking ``bottle.relay`` which implementation it uses."""
    proc = subprocess.run(
        [PY, "-c", "import bottle.relay as r; print(r.IMPLEMENTATION)"],
        env=implementation_env(impl),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def require_implementation(impl: str) -> None:
    """Skip native when it is not built (unless the run demands it); fail on a mismatch."""
    if impl == "native" and not native_built() and not os.environ.get("BOTTLE_REQUIRE_EXTENSION"):
        pytest.skip("native extension not built (set BOTTLE_REQUIRE_EXTENSION=1 to fail instead)")
    rc, out, err = reported_implementation(impl)
    if rc != 0 or out != impl:
        pytest.fail(
            f"bottle.relay with the {impl} environment reports {out!r} (exit {rc}); stderr:\n{err}"
        )


# --------------------------------------------------------------------------- small helpers


RAW_CLEARED = {
    "lflag": {"ECHO": termios.ECHO, "ICANON": termios.ICANON, "ISIG": termios.ISIG,
              "IEXTEN": termios.IEXTEN},
    "iflag": {"ICRNL": termios.ICRNL, "IXON": termios.IXON, "ISTRIP": termios.ISTRIP,
              "INLCR": termios.INLCR, "IGNCR": termios.IGNCR},
    "oflag": {"OPOST": termios.OPOST},
}
_FLAG_INDEX = {"iflag": 0, "oflag": 1, "lflag": 3}


def raw_violations(
    attrs: list[Any], mode: str = "copy", saved: list[Any] | None = None
) -> list[str]:
    """Names of the flags that a raw-mode terminal must have cleared but that are still set.

    In direct mode raw mode is for the keyboard only: the output flags must be the user's own
    (``saved``), since the child writes to the terminal itself; "oflag" names a difference.
    """
    bad = []
    for field, flags in RAW_CLEARED.items():
        if field == "oflag" and mode == "direct":
            assert saved is not None, "direct mode: give the user's own settings"
            if attrs[1] != saved[1]:
                bad.append("oflag")
            continue
        for name, bit in flags.items():
            if attrs[_FLAG_INDEX[field]] & bit:
                bad.append(name)
    return bad


def shown(data: bytes, mode: str) -> bytes:
    """What the user's terminal receives when a child whose pty is raw writes ``data``: the
    bytes themselves in copy mode (a raw pty does no output processing, nor does the user's
    raw terminal), and in direct mode the bytes after the user's terminal's own output
    processing, which the relay leaves as the user had it (the test terminal's: ONLCR)."""
    return data if mode == "copy" else data.replace(b"\n", b"\r\n")


def proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped, or has SIGSTOP pending where it cannot stop yet.

    The second case is real: dash runs a command with vfork, and its parent half waits for the
    child's exec in an uninterruptible sleep (state D). When a SIGSTOP to the group catches the
    child between vfork and exec, the child stops and the parent keeps the stop pending until
    the child lets go: it runs nothing meanwhile, and a SIGCONT discards the pending stop.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields["State"].split()[0] == "T":
        return True
    stop = 1 << (signal.SIGSTOP - 1)
    return any(int(fields[key], 16) & stop for key in ("SigPnd", "ShdPnd"))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _status_field(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def vm_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    return _status_field(pid, "VmRSS")


def context_switches(pid: int) -> int:
    """Voluntary plus involuntary context switches summed over every thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += _status_field(int(task.name), "voluntary_ctxt_switches")
            total += _status_field(int(task.name), "nonvoluntary_ctxt_switches")
    return total


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries ``mark`` (everything a session started)."""
    return pids_with_env(MARK_VAR, mark)


def pids_with_env(var: str, value: str) -> list[int]:
    """Live processes whose environment has ``var`` set to ``value``."""
    needle = f"{var}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(pid):
            found.append(pid)
    return found


def describe_pids(pids: Sequence[int]) -> str:
    """One line per pid with its command line, for failure messages."""
    lines = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        lines.append(f"  {pid} [{proc_state(pid)}] {cmd}")
    return "\n".join(lines)


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send a signal, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def read_ints(path: Path) -> list[int]:
    """Whitespace-separated integers in a file (empty when missing)."""
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- sessions


# A minimal job-control shell: it is the session leader of the terminal and runs the relay as
# the foreground job in its own process group, like an interactive shell does.  Needed where the
# kernel treats an orphaned process group differently (SIGTSTP is discarded there).
JOBSHELL = r"""
import os, signal, sys
info, argv = sys.argv[1], sys.argv[2:]
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
if os.environ.get("JOBSHELL_IGNORE_HUP"):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.setpgid(0, 0)
    os.read(r, 1)
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    os.execvp(argv[0], argv)
os.close(r)
os.setpgid(pid, pid)
os.tcsetpgrp(0, pid)
with open(info, "w") as f:
    f.write(f"{pid}\n")
os.write(w, b"x")
os.close(w)
_, status = os.waitpid(pid, 0)
with open(info, "a") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)}\n")
"""


class Session:
    """One relay run with the test as the user's terminal."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        impl: str,
        tmp: Path,
        relay_args: Sequence[str] = (),
        rows: int = 24,
        cols: int = 80,
        stdin: str | bytes = "tty",
        stdout: str = "tty",
        jobshell: bool = False,
        extra_env: dict[str, str] | None = None,
        argv: Sequence[str] | None = None,
        typeahead: bytes = b"",
    ) -> None:
        self.impl = impl
        self.tmp = tmp
        self.mark = uuid.uuid4().hex
        # The output mode the relay runs in (its --output option).
        args = list(relay_args if argv is None else argv)
        self.mode = "copy"
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--output" and i + 1 < len(args):
                self.mode = args[i + 1]
            elif arg.startswith("--output="):
                self.mode = arg.partition("=")[2]
        self.stdout_is_tty = stdout == "tty"
        # The terminal's reader collects the output; with stdout on a pipe (or a socket, as
        # libuv hosts give their children), the reader of its other end.
        self.terminal = Terminal(rows, cols, read=self.stdout_is_tty)
        self._stdout_peer = -1  # with stdout="socket": the end the test reads
        if typeahead:  # typed before the relay exists: it waits in the terminal's line buffer
            os.write(self.terminal.master, typeahead)
        self.reading = self.terminal.reading
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.returncode: int | None = None
        self.drained: bool | None = None  # whether `settle` saw all the terminal received
        self.info = tmp / f"jobshell-{self.mark}.info"
        env = implementation_env(impl)
        env[MARK_VAR] = self.mark
        env.update(extra_env or {})
        relay = list(argv) if argv is not None else [*RELAY_ARGV, *relay_args, "--", *cmd]
        self.jobshell = jobshell
        if jobshell:
            relay = [PY, "-c", JOBSHELL, str(self.info), *relay]
        # stdin: "tty", bytes (piped, then closed), "devnull" or "closed" (no fd 0 at all).
        kinds: dict[Any, Any] = {"tty": None, "devnull": subprocess.DEVNULL,
                                 "closed": subprocess.DEVNULL}
        stdin_arg: Any = kinds.get(stdin, subprocess.PIPE)
        stdout_arg: Any = None if self.stdout_is_tty else subprocess.PIPE
        relay_end = -1
        if stdout == "socket":
            ours, theirs = socket.socketpair()
            self._stdout_peer, relay_end = ours.detach(), theirs.detach()
            stdout_arg = relay_end
        self.stderr_path = tmp / f"stderr-{self.mark}"
        self._stderr_file = None
        stderr_arg: Any = None
        if not self.stdout_is_tty:
            self._stderr_file = open(self.stderr_path, "wb")  # noqa: SIM115
            stderr_arg = self._stderr_file
        self.proc = self.terminal.spawn(
            relay, env, stdin=stdin_arg, stdout=stdout_arg, stderr=stderr_arg,
            close_stdin=stdin == "closed",
        )  # fmt: skip
        if relay_end >= 0:
            os.close(relay_end)  # the relay has it now: its exit is the end of the stream
        if not self.stdout_is_tty:
            self._spawn(self._read_pipe)
        if isinstance(stdin, bytes):
            self._spawn(self._feed_pipe, stdin)

    # ------------------------------------------------------------------ threads

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _read_pipe(self) -> None:
        if self._stdout_peer >= 0:
            fd = self._stdout_peer
        else:
            assert self.proc.stdout is not None
            fd = self.proc.stdout.fileno()
        while not self._stop.is_set():
            # Paused like the terminal's reader (``reading`` cleared): the writer backs up.
            if not self.reading.wait(0.05):
                continue
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                return
            self.terminal.record(data)

    def _feed_pipe(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(data)
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()

    # ------------------------------------------------------------------ output

    def output(self) -> bytes:
        """Everything the relay wrote to the user's terminal so far."""
        return self.terminal.output()

    def text(self) -> str:
        """Output as text with CR LF folded to LF."""
        return self.output().decode("utf-8", "replace").replace("\r\n", "\n")

    def output_len(self) -> int:
        """Number of bytes received so far."""
        return self.terminal.output_len()

    def expect(self, needle: bytes, timeout: float = DEFAULT_TIMEOUT, start: int = 0) -> int:
        """Wait until ``needle`` appears at or after ``start``; return the offset just after it."""

        found = self.terminal.find(needle, timeout, start)
        if found is None:
            pytest.fail(f"{needle!r} never appeared in the output\n{self.describe()}")
        return found

    def wait_output_len(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Wait until at least ``n`` bytes have been received."""
        return bool(wait_until(lambda: self.output_len() >= n, timeout))

    # ------------------------------------------------------------------ input

    def send(self, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Type ``data`` into the user's terminal (all of it, or fail)."""
        sent = self.terminal.send(data, timeout, self._stop)
        if sent < len(data):
            pytest.fail(f"typed only {sent} of {len(data)} bytes\n{self.describe()}")

    def send_background(self, data: bytes) -> Callable[[], int]:
        """Type ``data`` from a thread; returns a function giving the bytes sent so far."""
        progress = [0]

        def run() -> None:
            progress[0] = self.terminal.send(data, 3600, self._stop, progress)

        self._spawn(run)
        return lambda: progress[0]

    # ------------------------------------------------------------------ process

    @property
    def relay_pid(self) -> int:
        """Pid of the relay process itself (not the job shell)."""
        if not self.jobshell:
            return self.proc.pid
        found = wait_until(lambda: read_ints(self.info)[:1], 30)
        assert found, f"job shell never reported the relay pid\n{self.describe()}"
        return int(found[0])

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the relay to exit; its status (negative: killed by that signal)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"relay still running after {timeout} s\n{self.describe()}")
        if self.jobshell:
            codes = read_ints(self.info)
            assert len(codes) == 2, f"job shell exited {rc} without a relay status"
            rc = codes[1]
        self.returncode = rc
        self.settle()
        return rc

    def settle(self, quiet: float = 0.03, limit: float = 2.0) -> None:
        """Let the reader collect what is still queued: everything the terminal (or the pipe)
        has received, then until output stops growing.

        On a terminal the first part is exact (a fence: see `Terminal.drain`) and waits as
        long as it takes, up to DEFAULT_TIMEOUT against a hang: a loaded machine can hold the
        reader, or the pty's worker, for more than `limit`, and a count taken before the
        fence came through would blame the relay for bytes still on their way. Whether it
        came through is kept for `describe`.
        """
        deadline = time.monotonic() + limit
        if self.stdout_is_tty:
            hang = time.monotonic() + DEFAULT_TIMEOUT
            while not (drained := self.terminal.drain(max(0.0, hang - time.monotonic()))):
                if time.monotonic() >= hang or not self.terminal.collecting():
                    break
                time.sleep(0.01)  # a pty too full to take the fence yet
            self.drained = drained
            deadline = max(deadline, time.monotonic() + quiet)
        elif self.proc.poll() is not None:
            for thread in self._threads[:1]:  # the pipe's reader: done at the pipe's end
                thread.join(limit)
        last = -1
        while time.monotonic() < deadline:
            now = self.output_len()
            if now == last:
                return
            last = now
            time.sleep(quiet)

    def leftovers(self, timeout: float = 5.0) -> list[int]:
        """Processes of this session still alive after a grace period (should be none)."""
        found = wait_until(lambda: not marked_pids(self.mark), timeout, 0.02)
        return [] if found else marked_pids(self.mark)

    def describe(self) -> str:
        """State for failure messages."""
        out = self.output()
        tail = out[-1500:]
        stderr = b""
        if self.stderr_path.exists():
            stderr = self.stderr_path.read_bytes()[-1500:]
        return (
            f"[{self.impl}] relay rc={self.proc.poll()} output ({len(out)} bytes, tail): "
            f"{tail!r}\nterminal drained: {self.drained}\nstderr: {stderr!r}\n"
            f"live session processes:\n"
            f"{describe_pids(marked_pids(self.mark))}"
        )

    def close(self) -> None:
        """Stop threads, kill whatever the session left running, release the terminal."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for pid in marked_pids(self.mark):
            kill_quietly(pid)
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._stdout_peer >= 0:
            os.close(self._stdout_peer)
            self._stdout_peer = -1
        if self._stderr_file is not None:
            self._stderr_file.close()
        self.terminal.close()


def output_args(mode: str) -> list[str]:
    """Command-line options selecting ``mode`` (none for the default, so that it is tested)."""
    return [] if mode == "copy" else ["--output", mode]


def assert_restored(session: Session) -> None:
    """The user's terminal is exactly as before and carries no O_NONBLOCK."""
    term = session.terminal
    now = term.attrs()
    assert now == term.saved, (
        f"termios not restored: saved={term.saved} now={now}\n{session.describe()}"
    )
    assert not term.slave_nonblocking(), f"O_NONBLOCK left on the terminal\n{session.describe()}"


def assert_none_marked(mark: str, timeout: float = 20.0) -> None:
    """No process carrying ``mark`` is left once ``timeout`` seconds have passed (processes
    that are ending get that long: exits are asynchronous, and slow under load)."""
    assert wait_until(lambda: not marked_pids(mark), timeout), describe_pids(marked_pids(mark))


def assert_no_leftovers(session: Session, timeout: float = 5.0) -> None:
    """No process started by the session survives it."""
    left = session.leftovers(timeout)
    assert not left, f"processes left behind:\n{describe_pids(left)}\n{session.describe()}"


def where_lost(s: Session, expected: bytes) -> str:
    """Where the output parts from ``expected``: its length, the first byte that differs, and
    whether the end arrived (a loss in the middle, or of the tail)."""
    out = s.output()
    at = next((i for i, (a, b) in enumerate(zip(out, expected, strict=False)) if a != b),
              min(len(out), len(expected)))  # fmt: skip
    return (f"{len(out)} bytes for {len(expected)} expected, the first difference at byte "
            f"{at} (got {out[at:at + 16]!r}, expected {expected[at:at + 16]!r}); the end "
            f"{'arrived' if out.endswith(expected[-16:]) else 'did not arrive'}\n{s.describe()}")


def echo_roundtrip(s: Session, data: bytes, result: Path, chunks: list[bytes] | None = None,
                   pause: float = 0.0) -> None:
    """Type ``data`` into an ECHO_CHILD session; check what the child got and what came back."""
    start = s.expect(shown(b"READY\n", s.mode))
    for chunk in chunks or [data]:
        s.send(chunk)
        if pause:
            time.sleep(pause)
    back = shown(data, s.mode)
    if not s.wait_output_len(start + len(back), 60):
        pytest.fail(f"not all came back: {where_lost(s, s.output()[:start] + back)}")
    assert s.wait(60) == 0, s.describe()
    echoed = s.output()[start:]
    assert len(echoed) == len(back), f"{len(echoed)} bytes back for {len(back)} expected"
    if echoed != back:
        at = next(i for i in range(len(back)) if echoed[i] != back[i])
        pytest.fail(f"output differs at byte {at}: expected {back[at:at + 16]!r}, "
                    f"got {echoed[at:at + 16]!r}")
    got = result.read_text().split()
    assert got == [str(len(data)), hashlib.sha256(data).hexdigest()], (
        "the child did not receive exactly what was typed"
    )


# --------------------------------------------------------------------------- child programs

# Raw-mode echo: reads exactly N bytes, writes each chunk back, records count and sha256.
ECHO_CHILD = r"""
import hashlib, os, sys, tty
n, out = int(sys.argv[1]), sys.argv[2]
tty.setraw(0)
os.write(1, b"READY\n")
h, got = hashlib.sha256(), 0
while got < n:
    data = os.read(0, 65536)
    if not data:
        break
    h.update(data)
    got += len(data)
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
with open(out, "w") as f:
    f.write(f"{got} {h.hexdigest()}")
"""

# Reports its pty size to a file at start, on every SIGWINCH and when the gate file appears.
# SIGWINCH is blocked from reading the size until the line is written: Python runs a handler for
# a signal that arrives during a handler inside it, and a nested report written between an outer
# handler's read and write would leave the outer one's older size last in the file.
WINCH_CHILD = r"""
import fcntl, os, signal, struct, sys, termios, time
report, gate = sys.argv[1], sys.argv[2]
def report_size(*_):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]
    with open(report, "a") as f:
        f.write(f"{rows} {cols}\n")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGWINCH})
signal.signal(signal.SIGWINCH, report_size)
report_size()
os.write(1, b"READY\n")
while not os.path.exists(gate):
    time.sleep(0.02)
report_size()
"""

# Deterministic blobs of terminal traffic: a 1 MiB OSC 52 sequence, colour and cursor
# sequences, UTF-8 of every length, NUL, 0xFF, C1 bytes, random bytes, DCS strings.
BLOB_SRC = r'''
def make_blob(seed, size):
    import base64, random
    rnd = random.Random(seed)
    out = bytearray(b"\x1b]52;c;" + base64.b64encode(rnd.randbytes(768 * 1024)) + b"\x07")
    while len(out) < size:
        k = rnd.randrange(6)
        if k == 0:
            rgb = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
            out += b"\x1b[38;2;%d;%d;%dm" % rgb
        elif k == 1:
            out += b"\x1b[%d;%dH" % (rnd.randrange(1, 500), rnd.randrange(1, 500))
        elif k == 2:
            out += "x\u00e9\u20ac\U0001d11e\u2588".encode()
        elif k == 3:
            out += bytes([0, 0xFF, 0x1B, 0x9B, 0x7F, 0x03, 0x04, 0x11, 0x13, 0x1A, 0x1C, 0x0D])
        elif k == 4:
            out += rnd.randbytes(rnd.randrange(1, 64))
        else:
            out += b"\x1bP" + b"q" * rnd.randrange(1, 2000) + b"\x1b\\"
    return bytes(out[:size])
'''


def make_blob(seed: int, size: int) -> bytes:
    """The same blob the child programs generate from BLOB_SRC."""
    namespace: dict[str, Any] = {}
    exec(BLOB_SRC, namespace)
    blob: bytes = namespace["make_blob"](seed, size)
    return blob


# Raw mode, then writes READY, the blob and END, never reading its input.
BLOB_WRITER_CHILD = BLOB_SRC + r"""
import os, sys, time, tty
seed, size = int(sys.argv[1]), int(sys.argv[2])
delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
tty.setraw(0)
blob = make_blob(seed, size)
os.write(1, b"READY\n")
time.sleep(delay)
view = memoryview(blob)
while view:
    view = view[os.write(1, view):]
os.write(1, b"END\n")
"""


def gate_wait(gate: Path) -> str:
    """Shell snippet that waits until ``gate`` exists."""
    return f"while [ ! -e {gate} ]; do sleep 0.02; done"
