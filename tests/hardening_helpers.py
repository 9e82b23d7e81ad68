"""Helpers for the hardening tests (tests/test_hardening_*.py, not the relay's).

The test plays the user's terminal: `UserTerminal` owns a fresh pty, runs a session with the
slave as its stdio and controlling terminal, and reads the master. `ProcWatch` records every
descendant of a process while a session runs (to find leftovers afterwards) and, given a
secret, scans every process's command line for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PY = sys.executable
BOTTLE = (PY, "-m", "bottle")
TIMEOUT = 60.0

# The exact fixed sequences bottle writes around a decorated session (see backend/terminal.py);
# written out here independently so that a change there has to be a deliberate one here too.
PUSH_TITLE = b"\x1b[22;0t"
POP_TITLE = b"\x1b[23;0t"
RESET_BG = b"\x1b]111\x07"


def set_title(text: str) -> bytes:
    return b"\x1b]0;" + text.encode() + b"\x07"


def set_bg(color: str) -> bytes:
    return b"\x1b]11;" + color.encode() + b"\x07"


def control_characters(data: bytes) -> list[str]:
    """ESC, BEL, NUL, other C0 controls but CR/LF/TAB/BS, DEL, and C1 controls found in `data`.

    C1 counts both as UTF-8 characters U+0080..U+009F and as raw bytes 0x80..0x9F that are not
    part of valid UTF-8 (an 8-bit terminal reads those as C1 too).
    """
    text = data.decode("utf-8", "surrogateescape")
    found = []
    for ch in text:
        code = ord(ch)
        if code in (0x0A, 0x0D, 0x09, 0x08):
            continue
        if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F or 0xDC80 <= code <= 0xDC9F:
            found.append(repr(ch))
    return found


# --------------------------------------------------------------------------- the terminal


def _take_controlling_tty() -> None:
    # In the child, after setsid() (start_new_session): stdin, the slave, becomes the controlling
    # terminal, so the session leader's group is the terminal's foreground group (^C reaches it).
    # Default dispositions, as a terminal gives them: pytest may inherit signals ignored (nohup,
    # a script's background job), and ignored-on-entry signals stay ignored in shells.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class UserTerminal:
    """A pty standing for the user's terminal; the test holds the master and a slave fd."""

    def __init__(self, rows: int = 30, cols: int = 100) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        attrs = termios.tcgetattr(self.slave)
        # Unusual but cooked settings: restoring "some sane mode" cannot pass for restoring
        # exactly what the user had. ISIG and VINTR stay, so ^C still means SIGINT.
        attrs[3] &= ~termios.ECHOCTL
        attrs[4] = attrs[5] = termios.B38400
        attrs[6][termios.VKILL] = b"\x0b"
        attrs[6][termios.VWERASE] = b"\x02"
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.before = termios.tcgetattr(self.slave)
        self.flags_before = fcntl.fcntl(self.slave, fcntl.F_GETFL)
        self._out = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._out += chunk

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` as a session leader whose stdio and controlling terminal is the slave."""
        return subprocess.Popen(
            list(argv),
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=_take_controlling_tty,
        )

    def output(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    def expect(self, needle: bytes, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{needle!r} did not appear within {timeout} s; output: {self.output()!r}"
                )
            time.sleep(0.01)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def settle(self, quiet: float = 0.3, timeout: float = 10) -> bytes:
        """Wait until no output arrived for `quiet` seconds (after a session ended)."""
        deadline = time.monotonic() + timeout
        seen = len(self.output())
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = len(self.output())
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return self.output()

    def attrs(self) -> list[Any]:
        return termios.tcgetattr(self.slave)

    def flags(self) -> int:
        """File status flags of the open file description the session shared with us."""
        return fcntl.fcntl(self.slave, fcntl.F_GETFL)

    def assert_restored(self) -> None:
        after = self.attrs()
        assert after == self.before, (
            f"the user's terminal was not restored exactly:\nbefore {self.before}\nafter  {after}"
        )
        assert self.flags() == self.flags_before, (
            f"file status flags changed: {self.flags_before:#o} -> {self.flags():#o}"
        )

    def close(self) -> None:
        self._stop.set()
        self._reader.join(5)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def user_terminal(rows: int = 30, cols: int = 100) -> Iterator[UserTerminal]:
    term = UserTerminal(rows, cols)
    try:
        yield term
    finally:
        term.close()


@contextlib.contextmanager
def terminal_on_stdio() -> Iterator[UserTerminal]:
    """Put a fresh user terminal on this process's fds 0 and 1 (for in-process sessions)."""
    term = UserTerminal()
    saved = [os.dup(0), os.dup(1)]
    try:
        os.dup2(term.slave, 0)
        os.dup2(term.slave, 1)
        yield term
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in saved:
            os.close(fd)
        term.close()


def wait_status(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> int:
    """The exit status (128+N for signal N); kills the process if it hangs."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the session did not end within {timeout} s") from None
    return 128 - rc if rc < 0 else rc


# --------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0].decode()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


class ProcWatch:
    """Background scan of /proc while a session runs.

    Records every descendant of `root` (pid, start time, command line). With `secret`, also
    records every process (anyone's) whose command line holds it, and, to show the secret was
    really in flight, the descendants whose environment holds it.
    """

    def __init__(self, root: int, secret: bytes | None = None, interval: float = 0.01) -> None:
        self.root = root
        self.secret = secret
        self.interval = interval
        self.seen: dict[int, tuple[int, str]] = {}
        self.cmdline_hits: list[tuple[int, bytes]] = []
        self.environ_holders: dict[int, str] = {}
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def scan_once(self) -> None:
        parents: dict[int, list[int]] = {}
        starts: dict[int, int] = {}
        for pid in _pids():
            st = _stat(pid)
            if st is None:
                continue
            parents.setdefault(st[0], []).append(pid)
            starts[pid] = st[1]
            if self.secret is not None:
                cmdline = _read(f"/proc/{pid}/cmdline")
                if self.secret in cmdline:
                    self.cmdline_hits.append((pid, cmdline))
        todo = list(parents.get(self.root, []))
        while todo:
            pid = todo.pop()
            todo += parents.get(pid, [])
            cmdline = _read(f"/proc/{pid}/cmdline")
            if pid not in self.seen:
                shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
                self.seen[pid] = (starts[pid], shown)
            if self.secret is not None and self.secret in _read(f"/proc/{pid}/environ"):
                self.environ_holders[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        self.rounds += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan_once()
            self._stop.wait(self.interval)

    def wait_rounds(self, n: int = 3) -> None:
        """Block until the scanner has completed `n` more rounds."""
        target = self.rounds + n
        deadline = time.monotonic() + 30
        while self.rounds < target and time.monotonic() < deadline:
            time.sleep(0.005)

    def start(self) -> ProcWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> ProcWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.kill_leftovers()

    def _alive(self) -> list[int]:
        alive = []
        for pid, (start, _) in self.seen.items():
            st = _stat(pid)
            if st is not None and st[1] == start and st[2] != "Z":
                alive.append(pid)
        return alive

    def leftovers(self, timeout: float = 10) -> list[str]:
        """Descendants seen during the session still alive after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return [f"{pid}: {self.seen[pid][1]}" for pid in self._alive()]

    def kill_leftovers(self) -> None:
        """Clean up after a failed test: SIGKILL whatever is still there."""
        for pid in self._alive():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- sessions

# run_agent(argv, tty=True).check() (exec_agent's status, with the precise error raised) in a
# process of its own: configuration in $HARDENING_CFG (JSON, so
# a title may hold any character), the secret (if any) taken from the variable it names.
AGENT_CHILD = r"""
import json, os, sys
from bottle.backend.smolmachines import SmolmachinesBottle
cfg = json.loads(os.environ.pop("HARDENING_CFG"))
kw = {}
if cfg.get("secret_name"):
    kw["secret_env"] = {cfg["secret_name"]: os.environ.pop(cfg["secret_name"])}
bottle = SmolmachinesBottle(
    cfg["machine"], agent_command="/bin/sh", agent_prompt_mode="none",
    terminal_title=cfg.get("title", ""), terminal_color=cfg.get("color", ""), **kw,
)
try:
    status = bottle.run_agent(cfg["argv"], tty=True).check().returncode
except Exception as exc:
    sys.stdout.write(f"\r\nRESULT=ERROR:{type(exc).__name__}:{exc}\r\n")
    sys.stdout.flush()
    sys.exit(99)
sys.stdout.write(f"\r\nRESULT=STATUS:{status}\r\n")
sys.stdout.flush()
sys.exit(status)
"""


def agent_session(
    route: str,
    machine: str,
    script: str,
    *,
    title: str = "",
    color: str = "",
    secret_name: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and env of an interactive agent session running `/bin/sh -c SCRIPT` as node.

    route "api": `SmolmachinesBottle.exec_agent(tty=True)` in a child process (exit status: the
    agent's, or 99 after printing `RESULT=ERROR:<class>:<message>`); route "cli": `bottle agent`.
    """
    env = dict(os.environ if base_env is None else base_env)
    if route == "api":
        cfg = {"machine": machine, "argv": ["-c", script], "title": title, "color": color,
               "secret_name": secret_name}  # fmt: skip
        env["HARDENING_CFG"] = json.dumps(cfg)
        return [PY, "-c", AGENT_CHILD], env
    if route != "cli":
        raise ValueError(route)
    argv = [*BOTTLE, "agent", "-n", machine, "--agent-command", "/bin/sh"]
    if title:
        argv += ["--title", title]
    if color:
        argv += ["--color", color]
    if secret_name:
        argv += ["--secret-env", secret_name]
    return [*argv, "--", "-c", script], env


def call_log(state_dir: Path) -> list[dict[str, Any]]:
    """The fake smolvm's call log entries ({"argv", "pid", "stdin_tty"})."""
    path = state_dir / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def machines_named(calls: Sequence[Sequence[str]]) -> set[str]:
    """Every machine name a list of smolvm calls addressed (-n/--name NAME, NAME:PATH)."""
    names = set()
    for argv in calls:
        if "--" in argv:  # the guest command's own arguments are not smolvm's
            argv = argv[: argv.index("--")]
        for i, arg in enumerate(argv):
            if arg in ("-n", "--name") and i + 1 < len(argv):
                names.add(argv[i + 1])
            elif arg.startswith("--name="):
                names.add(arg.split("=", 1)[1])
        if argv[1:2] == ["cp"]:
            names.update(a.split(":", 1)[0] for a in argv[2:] if ":" in a)
    return names


def wait_for(predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
