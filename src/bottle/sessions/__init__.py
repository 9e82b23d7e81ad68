"""Detached sessions: a program on a pty that outlives the terminal that started it.

`start` runs a program in a *session holder*, a background process that owns the program's
pty (and recording) and serves clients over a unix socket in the user's session directory
(see `bottle.sessions._dirs`), then returns a `Session` handle. `attach` connects this
process's terminal to a session (`bottle.sessions._client`), `connect` gives a bare protocol
connection (`bottle._sessionwire`); `list_sessions` and `find_session` find sessions again
from any process of the same user. A session ends when its program exits; its status
and last output are kept in its directory until `Session.remove`.

Nobody but the session's user gets in: the directories are 0700 and checked before use, and
the holder refuses a peer of another uid (SO_PEERCRED, or LOCAL_PEERCRED on macOS). Secrets
reach the program through the environment the holder is started with, never through a
command line or the socket.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bottle import _sessionwire as wire
from bottle.errors import (
    InvalidInputError,
    MachineNotFoundError,
    SessionEndedError,
    SessionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionPathError,
    SessionRunningError,
    SessionTeardownError,
)
from bottle.relay import Recording
from bottle.relay._tty import DEFAULT_SIZE, window_size
from bottle.sessions._client import (
    DEFAULT_DETACH_KEYS,
    AttachResult,
    Decoration,
    parse_detach_keys,
)
from bottle.sessions._client import run as _run_client
from bottle.sessions._dirs import (
    LOG,
    SCREEN,
    SOCKET_PATH_MAX,
    SPEC,
    STATE,
    SessionDir,
    base_dir,
    check_name,
    ensure_base,
)

__all__ = [
    "DEFAULT_DETACH_KEYS",
    "DEFAULT_HISTORY",
    "END_GRACE",
    "AttachResult",
    "Session",
    "SessionInfo",
    "attach",
    "connect",
    "find_session",
    "list_sessions",
    "parse_detach_keys",
    "start",
    "tear_down_lost",
]

# Output a session keeps for clients that attach later (bytes).
DEFAULT_HISTORY = 1 << 20
# How long `start` waits for the holder to say it is up (Python's start-up and the program's
# spawn; never the program's own start).
READY_TIMEOUT = 30.0
# With hold_until_raw: keys are held while the program's pty is canonical, at most this long
# (smolvm's client flushes its input when it goes raw; see bottle.relay.run).
HOLD_MS = 30_000
# `Session.end`: how long a program has to end after SIGTERM before its holder is killed
# (docker stop's default).
END_GRACE = 10.0
# A holder whose connection closed as it died lets go of its lock within this (it is exiting).
_LET_GO_S = 10.0


@dataclass(frozen=True)
class SessionInfo:
    """A session as `list_sessions` sees it.

    ``state`` is "running" (its holder is up), "exited" (the program ended with
    ``exit_status``) or "lost" (the holder died without an exit status: killed, or the
    machine went down under it). ``teardown`` is None when the session owns no machine,
    else "pending", "done" or "failed: …".
    """

    name: str
    machine: str | None
    started: float
    state: str
    clients: int
    writers: int
    watchers: int
    exit_status: int | None
    pid: int | None
    teardown: str | None
    directory: str


class Session:
    """A handle on one detached session (`start`, `find_session`)."""

    def __init__(self, directory: SessionDir, spec: Mapping[str, Any]) -> None:
        self._dir = directory
        self._spec = dict(spec)

    def __repr__(self) -> str:
        return f"Session({self.name!r}, machine={self.machine!r})"

    @property
    def name(self) -> str:
        return self._dir.name

    @property
    def machine(self) -> str | None:
        """The smolvm machine the session runs in (None for any other program)."""
        machine: str | None = self._spec.get("machine")
        return machine

    @property
    def directory(self) -> str:
        return self._dir.path

    @property
    def socket_path(self) -> str:
        return self._dir.socket_path

    @property
    def log_path(self) -> str:
        """The holder's log."""
        return self._dir.file(LOG)

    @property
    def started(self) -> float:
        started: float = self._spec.get("created", 0.0)
        return started

    @property
    def pid(self) -> int | None:
        """The holder's pid (None before it wrote its state)."""
        pid: int | None = (self._dir.read_json(STATE) or {}).get("pid")
        return pid

    @property
    def terminal_title(self) -> str:
        """The title a client may give the terminal it attaches from ("" for none)."""
        return str(self._spec.get("terminal_title") or "")

    @property
    def terminal_color(self) -> str:
        """The background colour a client may give its terminal ("" for none)."""
        return str(self._spec.get("terminal_color") or "")

    @property
    def teardown_plan(self) -> Mapping[str, Any] | None:
        """What ends with the session: the machine, and the smolvm steps that remove it."""
        plan: Mapping[str, Any] | None = self._spec.get("teardown")
        return plan

    def info(self) -> SessionInfo:
        """The session's state now."""
        state = self._dir.read_json(STATE) or {}
        alive = self._dir.holder_alive()
        status = state.get("exit_status")
        if status is not None:
            now = "exited"
        elif alive:
            now = "running"
        else:
            now = "lost"
        live = alive and status is None
        teardown = state.get("teardown")
        if self.teardown_plan and teardown is None:
            teardown = "pending"
        return SessionInfo(
            name=self.name,
            machine=self.machine,
            started=self.started,
            state=now,
            clients=int(state.get("clients") or 0) if live else 0,
            writers=int(state.get("writers") or 0) if live else 0,
            watchers=int(state.get("watchers") or 0) if live else 0,
            exit_status=status,
            pid=state.get("pid"),
            teardown=teardown,
            directory=self.directory,
        )

    @property
    def exit_status(self) -> int | None:
        """The program's exit status once it ended (128+N for signal N), else None."""
        status: int | None = (self._dir.read_json(STATE) or {}).get("exit_status")
        return status

    def running(self) -> bool:
        """Whether the holder is up (it stays up through the teardown after the exit)."""
        return self._dir.holder_alive()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the holder is gone (the program ended, the teardown done); the exit
        status, None when the holder died without one or ``timeout`` (seconds) ran out."""
        if timeout is None:
            fd = os.open(self._dir.file("lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # blocks until the holder lets go
            finally:
                os.close(fd)
        else:
            deadline = time.monotonic() + timeout
            while self._dir.holder_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                time.sleep(min(0.05, left))
        return self.exit_status

    def screen(self) -> bytes:
        """The last output the session kept, once it ended (b"" before, or when lost)."""
        try:
            fd = os.open(self._dir.file(SCREEN), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return b""
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the holder, which passes SIGTERM, SIGHUP, SIGINT and SIGQUIT on to
        the program (and the program's exit ends the session)."""
        pid = self.pid
        if pid is None or not self._dir.holder_alive():
            raise SessionEndedError(
                f"session {self.name!r} has no holder running",
                name=self.name,
                status=self.exit_status,
                screen=self.screen(),
            )
        os.kill(pid, sig)

    def end(self, grace: float = END_GRACE) -> int | None:
        """End the session if it still runs, and wait until its holder is gone.

        The program gets SIGTERM (through the holder, as `signal` sends it). smolvm's client
        has no handler for it, so an agent's session ends at once, and smolvm's agent kills
        the guest command when its client goes. A program still running ``grace`` seconds
        later loses its holder to SIGKILL: the pty's master closes, and the kernel hangs the
        program up. The session is then lost, its teardown owed (`remove` does it). Returns
        the program's exit status: None when the holder had to be killed or had died.

        Raises:
            InvalidInputError: ``grace`` is not a number of seconds, 0 or more.
        """
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise InvalidInputError(f"grace must be a number of seconds, 0 or more, not {grace!r}")
        if self.exit_status is not None:
            return self.wait()  # over: its holder may still be tearing its machine down
        try:
            self.signal(signal.SIGTERM)
        except SessionEndedError:
            return self.wait()  # its holder has died
        deadline = time.monotonic() + grace
        while self.exit_status is None and self.running():
            if time.monotonic() >= deadline:
                pid = self.pid
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        return self.wait()

    def teardown(self) -> str | None:
        """Run the teardown the holder did not (its holder died): stop and delete the
        session's machine. The outcome ("done", "failed: …"), None when there is none.

        Raises:
            SessionRunningError: the holder is still up (it tears down itself).
        """
        plan = self.teardown_plan
        if not plan:
            return None
        lock = self._dir.take_lock()
        if lock is None:
            raise SessionRunningError(
                f"session {self.name!r} is still running (holder pid {self.pid}); its holder "
                "tears its machine down when the program ends"
            )
        try:
            state = self._dir.read_json(STATE) or {}
            outcome: str | None = state.get("teardown")
            if outcome != "done":
                outcome = run_teardown(plan)
                state["teardown"] = outcome
                self._dir.write_json(STATE, state)
            return outcome
        finally:
            os.close(lock)

    def remove(self) -> None:
        """Forget an ended session: its teardown first, if still owed, then its directory.

        Raises:
            SessionRunningError: the holder is still up.
            SessionTeardownError: the teardown failed (the session is kept).
        """
        outcome = self.teardown()
        if outcome is not None and outcome != "done":
            machine = str((self.teardown_plan or {}).get("machine"))
            raise SessionTeardownError(
                f"session {self.name!r}: tearing its machine {machine!r} down {outcome} (the "
                "session is kept: removing it again tries again)",
                machine=machine,
            )
        lock = self._dir.take_lock()
        if lock is None:
            raise SessionRunningError(f"session {self.name!r} is still running")
        try:
            self._dir.check()
            shutil.rmtree(self._dir.path)
        finally:
            os.close(lock)


def run_teardown(plan: Mapping[str, Any]) -> str:
    """Stop and delete a session's machine as its launch would have; "done" or why not."""
    import logging

    from bottle import smolvm as sv

    log = logging.getLogger("bottle.sessions")
    smolvm = sv.Smolvm(plan.get("smolvm"))
    outcome = "done"
    for step in plan["steps"]:
        try:
            getattr(smolvm, step)(plan["machine"])
        except MachineNotFoundError:
            # Gone already (`bottle rm -f` while the session ran): what the teardown is for.
            log.info("teardown: machine %r is gone already", plan["machine"])
            break
        except Exception as exc:
            # The caller reports the outcome (the first failure): this is for the log.
            log.info("teardown: %s of machine %r failed: %s", step, plan["machine"], exc)
            if outcome == "done":
                outcome = f"failed: {step}: {exc}"
    return outcome


def find_session(name: str) -> Session:
    """The session of that name (this user's).

    Raises:
        SessionNotFoundError: there is none.
        SessionPathError: its directory is not safely this user's.
    """
    check_name(name)
    base = ensure_base(create=False)
    if base is None:
        raise SessionNotFoundError(f"no session {name!r} (no session directory {base_dir()})")
    sdir = SessionDir(os.path.join(base, name))
    try:
        sdir.check()
    except FileNotFoundError:
        raise SessionNotFoundError(f"no session {name!r} in {base}") from None
    spec = sdir.read_json(SPEC)
    if spec is None:
        raise SessionNotFoundError(f"session {name!r} in {base} has no readable {SPEC}")
    return Session(sdir, spec)


def list_sessions() -> list[SessionInfo]:
    """This user's sessions, by name. Entries that are not safely the user's are left out
    (and logged)."""
    import logging

    base = ensure_base(create=False)
    if base is None:
        return []
    found = []
    for name in sorted(os.listdir(base)):
        try:
            found.append(find_session(name).info())
        except (InvalidInputError, SessionNotFoundError):
            continue
        except SessionPathError as exc:
            logging.getLogger("bottle.sessions").warning("%s", exc)
    return found


def tear_down_lost() -> list[tuple[SessionInfo, str]]:
    """Do the teardown that holders which died left pending: stop and delete their sessions'
    machines, as their launches would have. What `bottle` commands call when they start, so
    that the next one to notice does it.

    Returns each session torn down (as it was before) with the outcome ("done", "failed:
    …"); a session whose teardown another process is doing meanwhile is left to it.
    """
    done = []
    for info in list_sessions():
        if info.teardown != "pending" or info.state == "running":
            continue
        try:
            outcome = find_session(info.name).teardown()
        except (SessionRunningError, SessionNotFoundError):
            continue  # taken meanwhile (another bottle), or removed
        if outcome is not None:
            done.append((info, outcome))
    return done


def connect(
    session: str | Session,
    *,
    readonly: bool = False,
    size: tuple[int, int] | None = None,
    redraw: bool = False,
    since: int = wire.SINCE_OLDEST,
    timeout: float | None = 10.0,
) -> socket.socket:
    """Connect to a session's holder and attach; the socket, the ATTACH frame sent.

    What comes back is the protocol's (`bottle._sessionwire`): ATTACHED, then the output from
    ``since`` on (DROPPED first when some of it is gone), and EXIT at the end. ``size``
    (rows, cols) is the client's terminal size (default: this process's terminal's, else
    24x80); a writer's size becomes the program's (the most recently active writer's wins),
    a ``readonly`` client's is ignored, as are its keys. ``redraw`` makes the program repaint
    if attaching does not resize it. ``timeout`` applies to the socket (None: blocking).

    Raises:
        SessionNotFoundError: no such session.
        SessionEndedError: the session is over (its status and last output attached).
        SessionPathError: its directory or socket is not safely this user's (a symlink,
            another user's), or the holder runs as another user.
    """
    found = find_session(session) if isinstance(session, str) else session
    return _connect(found, readonly, size, redraw, since, timeout)


def attach(
    session: str | Session,
    *,
    readonly: bool = False,
    detach_keys: str = "ctrl-p,ctrl-q",
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    since: int = wire.SINCE_OLDEST,
    redraw: bool = True,
    decoration: Decoration | None = None,
    direct: bool | None = None,
) -> AttachResult:
    """Attach this process's terminal (``stdin_fd``, ``stdout_fd``) to a session until the
    user detaches or the session ends; how it ended.

    The terminal is in raw mode meanwhile, its size is the session's while it is the most
    recently active writer, and what the program prints comes out on it: first the output
    the holder kept from ``since`` on (default: all it kept), then what comes, with a repaint
    (``redraw``) so that a full-screen program looks right. ``detach_keys`` (docker's syntax,
    see `parse_detach_keys`; default Ctrl-P Ctrl-Q) typed in a row detach; so do SIGTERM,
    SIGINT, SIGQUIT and a lost terminal, and none of them ends the session. A ``readonly``
    watcher types nothing (its keys are dropped, but for the detach keys). ``decoration``
    (`bottle.backend.terminal.decoration(session.terminal_title, session.terminal_color)`)
    is written once attached and reset on the way out. The terminal's exact settings come
    back on every way out, whatever it was (see `bottle.sessions._client`).

    Where keys and output are one terminal, a writer hands it to the holder, which then
    reads the keys and writes the output itself (``direct``: one process less each way, as
    in a session run in process; see `bottle._sessionwire`). A watcher keeps its terminal
    (the holder sends it frames, and its own process writes them), unless ``direct=True``;
    ``direct=False`` keeps a writer's too, as happens anyway where there is no such terminal.

    Raises:
        SessionNotFoundError: no such session.
        SessionEndedError: the session is over (its status and last output attached): the
            terminal was not touched.
        SessionPathError: its directory or socket is not safely this user's.
        InvalidInputError: bad ``detach_keys``.
    """
    keys = parse_detach_keys(detach_keys)
    found = find_session(session) if isinstance(session, str) else session

    def connect_at(
        at: int, size: tuple[int, int], repaint: bool, hand_over: bool
    ) -> tuple[socket.socket, int, int]:
        sock = _connect(found, readonly, size, repaint, at, 10.0, hand_over)
        try:
            flags, offset = _greeted(found, sock)
        except BaseException:
            sock.close()
            raise
        return sock, flags, offset

    result = _run_client(
        connect_at,
        since=since,
        readonly=readonly,
        detach_keys=keys,
        stdin_fd=stdin_fd,
        stdout_fd=stdout_fd,
        redraw=redraw,
        decoration=decoration,
        direct=direct,
    )
    if result.ended == "lost":
        # The holder's socket closes as it dies, but its lock (the sign of a live holder)
        # only when all its descriptors are gone, maybe a moment later: wait for that, so
        # that what comes next (its teardown) sees the session as lost, not running.
        found._dir.wait_let_go(found.pid, _LET_GO_S)
    return result


def _greeted(session: Session, sock: socket.socket) -> tuple[int, int]:
    """Read the holder's first frame: ATTACHED's (flags, offset); an ERROR (the holder
    refused) or a connection closed at once (the session ended meanwhile) raise."""

    def take(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise _ended(session) if not session.running() else SessionError(
                    f"session {session.name!r}: the holder closed the connection"
                )
            data += chunk
        return data

    head = take(wire.HEADER_SIZE)
    kind, length = head[0], int.from_bytes(head[1:], "big")
    if length > wire.ERROR_MAX + 64:
        raise SessionError(f"session {session.name!r}: the holder sent a bad first frame")
    payload = take(length)
    if kind == wire.ERROR:
        raise SessionError(f"session {session.name!r}: {payload.decode(errors='replace')}")
    if kind != wire.ATTACHED:
        raise SessionError(f"session {session.name!r}: the holder sent a bad first frame")
    _, flags, _, _, offset = wire.parse_attached(payload)
    return flags, offset


def _ended(session: Session) -> SessionEndedError:
    status = session.exit_status
    what = f"exited with status {status}" if status is not None else "was lost (its holder died)"
    return SessionEndedError(
        f"session {session.name!r} {what}", name=session.name, status=status,
        screen=session.screen(),
    )  # fmt: skip


def _connect(
    session: Session,
    readonly: bool,
    size: tuple[int, int] | None,
    redraw: bool,
    since: int,
    timeout: float | None,
    direct: bool = False,
) -> socket.socket:
    sdir = session._dir
    sdir.check()
    if session.exit_status is not None:
        raise _ended(session)
    try:
        sdir.check_socket()
    except FileNotFoundError:
        raise _ended(session) from None
    rows, cols = size or _terminal_size()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(sdir.socket_path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise _ended(session) from None
        from bottle._hub_py import peer_uid

        uid = peer_uid(sock.fileno())
        if uid != os.geteuid():
            raise SessionPathError(
                f"session {session.name!r}: the process behind {sdir.socket_path} runs as "
                f"uid {uid}, not as you; refused"
            )
        sock.sendall(
            wire.attach(rows, cols, readonly=readonly, redraw=redraw, since=since, direct=direct)
        )
    except BaseException:
        sock.close()
        raise
    return sock


def _terminal_size() -> tuple[int, int]:
    for fd in (0, 1, 2):
        size = window_size(fd)
        if size:
            return size
    return DEFAULT_SIZE


def _resolve(program: str, env: Mapping[str, str]) -> str:
    if "/" in program:
        return program
    found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return found


def _new_dir(base: str, name: str | None, default: str) -> SessionDir:
    """Claim the session's directory (mkdir is the claim: two starters cannot share one)."""
    names = [check_name(name)] if name is not None else [default] + [
        f"{default}-{n}" for n in range(2, 100)
    ]
    for candidate in names:
        path = os.path.join(base, candidate)
        if len(os.fsencode(os.path.join(path, "sock"))) > SOCKET_PATH_MAX:
            raise SessionError(
                f"the session socket {os.path.join(path, 'sock')} is longer than a unix "
                f"socket's path may be ({SOCKET_PATH_MAX} bytes): use a shorter session name, "
                "or set XDG_RUNTIME_DIR to a shorter directory"
            )
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if name is not None:
                raise SessionExistsError(
                    f"a session named {name!r} exists already (running, or ended and not "
                    "removed): pick another name, or remove it"
                ) from None
            continue
        return SessionDir(path)
    raise SessionExistsError(f"sessions {default!r} to {default}-99 all exist: remove some")


def _default_name(machine: str | None, argv: Sequence[str]) -> str:
    stem = machine or os.path.basename(argv[0])
    cleaned = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in stem)[:48]
    cleaned = cleaned.lstrip("_.-") or "session"
    return cleaned.replace("..", ".")


def start(
    argv: Sequence[str],
    *,
    name: str | None = None,
    machine: str | None = None,
    env: Mapping[str, str] | None = None,
    size: tuple[int, int] | None = None,
    history: int = DEFAULT_HISTORY,
    hold_until_raw: bool = False,
    record: str | os.PathLike[str] | Recording | None = None,
    record_input: bool = False,
    record_title: str | None = None,
    secret_names: Sequence[str] = (),
    teardown: Mapping[str, Any] | None = None,
    terminal_title: str = "",
    terminal_color: str = "",
) -> Session:
    """Start ``argv`` in a new session holder and return its handle once it runs.

    ``env`` is the program's environment (default: this process's), and the holder's: pass
    secrets there (their ``secret_names`` are dropped from the holder's own environment once
    the program runs). ``name`` defaults to the ``machine`` (or the program's name), with
    ``-2``, ``-3``… when taken. ``size`` (rows, cols) is the pty's first size (default: this
    process's terminal's, else 24x80); clients set it from then on. ``history`` bytes of the
    latest output are kept for clients that attach later. ``hold_until_raw`` and the
    recording options are `bottle.relay.run`'s (a ``record`` file is made here, before the
    holder starts, and removed again if it does not). ``teardown``, ``{"machine": NAME, "smolvm":
    PATH, "steps": ["stop", "delete"]}``, is run by the holder once the program has exited
    (or by `Session.teardown` if the holder died). ``terminal_title`` and ``terminal_color``
    are kept for clients that decorate the terminal they attach from (checked by the caller:
    `bottle.backend.terminal`).

    Raises:
        FileNotFoundError, PermissionError: the program cannot be run (nothing is left).
        InvalidInputError: a bad name, an empty ``argv``, a bad ``history``.
        SessionExistsError: ``name`` is taken.
        SessionPathError: the session directory is not safely this user's.
        SessionError: the holder did not come up (its log's reason in the message).
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise InvalidInputError("nothing to run: argv is empty")
    from bottle._hub_py import MIN_HISTORY

    if history < MIN_HISTORY:
        raise InvalidInputError(f"history must be at least {MIN_HISTORY} bytes, not {history}")
    environ = dict(os.environ if env is None else env)
    rows, cols = size or _terminal_size()
    if record is None and record_input:
        raise InvalidInputError("record_input needs a recording: give record=FILE")
    spec: dict[str, Any] = {
        "version": 1,
        "machine": machine,
        "argv": args,
        "path": _resolve(args[0], environ),
        "rows": rows,
        "cols": cols,
        "history": history,
        "hold_ms": HOLD_MS if hold_until_raw else 0,
        "record_input": record_input,
        "record_title": record_title,
        "secret_names": list(secret_names),
        "teardown": dict(teardown) if teardown else None,
        "terminal_title": terminal_title,
        "terminal_color": terminal_color,
    }
    base = ensure_base()
    assert base is not None
    if record is None or isinstance(record, Recording):
        return _start(spec, environ, base, name, record)
    with Recording(record) as recording:  # made first; removed if no session ran into it
        return _start(spec, environ, base, name, recording)


def _start(
    spec: dict[str, Any],
    environ: dict[str, str],
    base: str,
    name: str | None,
    recording: Recording | None,
) -> Session:
    record_fd = recording.take() if recording is not None else -1
    sdir = _new_dir(base, name, _default_name(spec["machine"], spec["argv"]))
    spec.update(
        name=sdir.name,
        created=time.time(),
        record=recording.path if recording is not None else None,
        record_fd=record_fd if record_fd >= 0 else None,
    )
    try:
        sdir.write_json(SPEC, spec)
        _launch_holder(sdir, environ, record_fd)
    except BaseException:
        shutil.rmtree(sdir.path, ignore_errors=True)
        raise
    if recording is not None:
        recording.session_ran()  # the holder writes into it now
    return Session(sdir, spec)


def _launch_holder(sdir: SessionDir, environ: Mapping[str, str], record_fd: int) -> None:
    lock = sdir.take_lock()
    if lock is None:  # a fresh directory: nobody can hold it
        raise SessionError(f"session {sdir.name!r}: its lock is taken")
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    log = os.open(sdir.file(LOG), flags, 0o600)
    ready_r, ready_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bottle.sessions._holder", sdir.path, str(ready_w), str(lock)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=dict(environ),
            cwd="/",
            start_new_session=True,
            # The recording's file travels as a descriptor: made (and checked) here.
            pass_fds=(ready_w, lock) if record_fd < 0 else (ready_w, lock, record_fd),
        )
    finally:
        # The holder has its own copies; the lock stays held through them.
        os.close(ready_w)
        os.close(log)
        os.close(lock)
    try:
        proc.wait()  # the first process forks the holder and exits at once
        report = _read_report(ready_r)
    finally:
        os.close(ready_r)
    if report is None:
        raise SessionError(
            f"the holder of session {sdir.name!r} did not come up: {_log_tail(sdir)}"
        )
    if not report.get("ok"):
        code = report.get("errno")
        message = report.get("message") or "unknown error"
        if code:
            raise OSError(code, message, report.get("filename"))
        raise SessionError(f"session {sdir.name!r} could not start: {message}")


def _read_report(fd: int) -> dict[str, Any] | None:
    import json

    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        report = json.loads(data)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _log_tail(sdir: SessionDir) -> str:
    with contextlib.suppress(OSError):
        with open(sdir.file(LOG), errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        if lines:
            return lines[-1]
    return "no reason logged"

