"""One relay run: `run` checks its arguments, `Session` sets up, relays and undoes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import stat
import sys
import termios
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

from bottle.relay._children import KILL_GRACE, Child, ResizeWorker
from bottle.relay._impl import core
from bottle.relay._recording import Recording, write_header
from bottle.relay._tty import DEFAULT_SIZE, WINSIZE, UserTerminal, defer, window_size

# Ways to carry the child's output (see `run`); the first is the default.
OUTPUTS = ("copy", "direct")

# Signals the relay catches while it runs (main thread only). The first four are forwarded to
# the child's process group; the others drive window size, job control and the child's exit.
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
_CAUGHT = (*_FORWARDED, signal.SIGWINCH, signal.SIGCHLD, signal.SIGTSTP, signal.SIGCONT)
# Like a shell, the relay leaves these alone when its caller ignored them (`nohup`, `trap ''`):
# they stay ignored and are not forwarded. The others it needs to work at all.
_KEPT_IF_IGNORED = (*_FORWARDED, signal.SIGTSTP)

# With hold_until_raw, input and its end are held from the child's start until its pty leaves
# canonical mode, at most this long. smolvm switches its stdin to raw with TCSAFLUSH only after
# the guest answered `Started` (src/agent/client.rs, interactive_session), a wait with no
# timeout of its own: on an image machine a connect ping of up to 3 s, the overlay and crun's
# start come first. Input released before that is flushed all the same, so the bound only
# guards against a child that never goes raw; 30 s is smolvm's own default read timeout for an
# agent request (DEFAULT_READ_TIMEOUT_SECS), ten times the ping's.
_HOLD_MS = 30_000
# After the child's exit, output still in flight is copied until the pty stays quiet this long
# (or this long in all, if a grandchild keeps writing).
_DRAIN_IDLE_MS = 100
_DRAIN_CAP_MS = 2000
# At the end, the recording's last events get this long to reach the file (a stalled disk).
_RECORD_FINISH_MS = 5000

log = logging.getLogger("bottle.relay")


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    machine: str | None = None,
    resize_command: str | None = None,
    hold_until_raw: bool = False,
    output: str = "copy",
    record: str | os.PathLike[str] | Recording | None = None,
    record_input: bool = False,
    record_title: str | None = None,
) -> int:
    """Run ``argv`` on a new pty relayed to ``stdin_fd``/``stdout_fd``; return its exit status.

    The status is the child's exit code, or 128+N when signal N killed it. ``argv[0]`` is looked
    up on the PATH of ``env`` (default: ``os.environ``), which is also the child's environment,
    as execvp does (a file without ``#!`` is run by /bin/sh).
    When ``stdin_fd`` is a terminal it is in raw mode while the child runs and its exact settings
    are restored on every way out (and as soon as the child lets go of its pty, so that Ctrl-C
    reaches it as a signal). A negative or closed ``stdin_fd`` means no input: the child sees
    end-of-input at once. ``resize_command`` is a command template run (off the copy loop, at
    most one at a time, latest size wins) after each window change, with ``{rows}``,
    ``{cols}`` and ``{machine}`` replaced.

    ``hold_until_raw`` is for children that flush their input when they switch their terminal
    to raw mode (smolvm ``-i -t``): keys, piped bytes and the end of input are held from the
    child's start until its pty leaves canonical mode or it exits (at most 30 s). Without it
    input goes through at once. Ctrl-C typed while input is held ends the session instead of
    being held: what was typed is dropped, the child gets SIGINT (then SIGKILL), and the
    status is 130.

    ``output="copy"`` makes the pty the child's stdout and stderr, and the relay copies what it
    writes (with the pty's own output processing, e.g. ``\n`` to ``\r\n``). ``"direct"`` gives
    the child ``stdout_fd`` itself as stdout and stderr, uncopied: the pty is only its stdin and
    controlling terminal (what it writes to ``/dev/tty`` is still copied, and may arrive after
    what it writes to stdout later). The user's terminal keeps its output processing there
    (raw mode is for the keyboard). That suits terminal clients that run raw and write finished
    output, like ``smolvm machine exec -i -t``, and costs the relay nothing for everything they
    print. Where ``stdout_fd`` cannot be reopened for the relay's own non-blocking writes (a
    socket), the output is copied as in ``"copy"``: O_NONBLOCK on the child's own stdout would
    make its writes fail.

    ``record`` names a new file (created mode 0600 whatever the umask, before anything else;
    an existing one is refused; removed again if the command cannot start), or is a
    `Recording` made beforehand, that receives the session as an asciicast v2 recording,
    written as it goes: a header with the terminal's
    size, the time, ``TERM``/``SHELL`` and ``record_title`` (default: the command's name), an
    ``"o"`` event for each piece of output the terminal took and an ``"r"`` event for each
    window change. ``record_input`` adds ``"i"`` events for what was typed (off by default:
    typed secrets would land in the file). Recording needs ``output="copy"``: the relay can
    only record what it copies. Output that is not UTF-8 is recorded as U+FFFD, as a terminal
    shows it. A recording the disk cannot take (full, or stuck for 5 s) stops there with a
    warning; the session goes on.

    Thread rule: Python only lets the main thread install signal handlers. Called from the main
    thread, `run` takes over SIGWINCH, SIGCHLD, SIGTSTP, SIGCONT, SIGTERM, SIGHUP, SIGINT and
    SIGQUIT (and the `signal.set_wakeup_fd`) while it runs, unblocked in that thread whatever
    its mask, and restores the previous handlers and mask; those of the last five that were
    ignored stay ignored and are not forwarded. Called from
    any other thread it relays without signal handling: no window-size changes after the
    start, no job control, and signals sent to the process are not forwarded. Either way
    SIGPIPE is blocked in the calling thread while it runs: a reader that goes away ends the
    output (EPIPE) instead of killing a host that keeps SIGPIPE at its default.

    Raises:
        FileNotFoundError, PermissionError: the program cannot be executed (named in the error).
        ValueError: empty ``argv``, an ``env`` name that is empty or holds ``=``, a bad
            ``resize_command``, an unknown ``output``, a closed ``stdout_fd``, a recording
            with ``output="direct"`` or ``record_input`` without one, or a ``record`` file
            that cannot be created (`InvalidInputError`: it exists, its directory does not,
            or the place takes no new file).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
    if record is None and record_input:
        raise ValueError("record_input needs a recording: give record=FILE")
    if record is not None and output != "copy":
        raise ValueError(
            "recording needs output='copy': the relay can only record the output it copies"
        )
    args = [os.fsencode(arg) for arg in argv]
    if not args:
        raise ValueError("nothing to run: argv is empty")
    environ: Mapping[str, str] = os.environ if env is None else env
    envp = _envp(environ)
    path = _resolve(argv[0], args[0], environ)
    resize = None
    if resize_command is not None:
        resize = _resize_argv(resize_command, machine)
    session = Session(
        path,
        args,
        envp,
        stdin_fd,
        stdout_fd,
        environ,
        machine,
        resize,
        hold_until_raw,
        output == "direct",
    )
    if record is None:
        return session.run()
    title = os.path.basename(os.fsdecode(argv[0])) if record_title is None else record_title
    if isinstance(record, Recording):
        session.record(record, title, record_input)
        return session.run()
    # Created before the session sets anything up, and removed again if it never starts.
    with Recording(record) as recording:
        session.record(recording, title, record_input)
        return session.run()


def _envp(environ: Mapping[str, str]) -> list[bytes]:
    # execve would take "A=B" as a variable A (value "B=…"), and exec fails late and vaguely on
    # an empty name: refuse both, like os.execve, before anything runs.
    envp = []
    for key, value in environ.items():
        name = os.fsencode(key)
        if not name or b"=" in name or b"\0" in name:
            raise ValueError(f"illegal environment variable name: {key!r}")
        envp.append(name + b"=" + os.fsencode(value))
    return envp


def _resolve(name: str | bytes, program: bytes, environ: Mapping[str, str]) -> bytes:
    """The file to execute for ``program``, looked up like execvp does."""
    shown = os.fsdecode(name)
    if not program:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)
    if b"/" in program:
        return program
    denied = False
    for directory in os.get_exec_path(environ):
        candidate = os.path.join(os.fsencode(directory or "."), program)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if os.access(candidate, os.X_OK):
            return candidate
        denied = True
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), shown)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)


def _resize_argv(template: str, machine: str | None) -> list[str]:
    """Split and check a --resize-command template; placeholders are filled per resize."""
    import shlex
    import string

    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"resize command {template!r}: {exc}") from None
    if not words:
        raise ValueError("resize command is empty")
    for word in words:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(word) if f is not None]
        except ValueError as exc:
            raise ValueError(f"resize command {template!r}: {exc}") from None
        for field in fields:
            if field not in ("rows", "cols", "machine"):
                raise ValueError(
                    f"resize command {template!r}: unknown placeholder {{{field}}} "
                    "(use {rows}, {cols} and {machine})"
                )
            if field == "machine" and machine is None:
                raise ValueError(
                    f"resize command {template!r} uses {{machine}} but no machine was given"
                )
    return words


class Session:
    """One relay run: a child on a new pty, relayed to the user's terminal (`UserTerminal`).

    Every setup step registers its undo as soon as it has succeeded.
    """

    def __init__(
        self,
        path: bytes,
        args: list[bytes],
        envp: list[bytes],
        stdin_fd: int,
        stdout_fd: int,
        environ: Mapping[str, str],
        machine: str | None,
        resize: list[str] | None,
        hold: bool,
        direct: bool,
    ) -> None:
        self._path = path
        self._args = args
        self._envp = envp
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd
        self._environ = environ
        self._machine = machine
        self._resize = resize
        self._hold = hold
        self._direct = direct
        # Every setup step's undo, run in reverse on every way out.
        self._undo = ExitStack()
        self._term: UserTerminal | None = None
        self._size_reported = False
        self._worker: ResizeWorker | None = None
        self._record: tuple[Recording, str, bool] | None = None
        self._record_err = 0

    def record(self, recording: Recording, title: str, with_input: bool) -> None:
        """Record the session into ``recording`` (see `run`)."""
        self._record = (recording, title, with_input)

    def run(self) -> int:
        try:
            with self._undo:
                return self._start()
        finally:
            # After the terminal is restored: a warning must not land on a raw terminal.
            if self._record_err and self._record is not None:
                log.warning(
                    "bottle relay: the recording %s is incomplete (%s): the session went on "
                    "unrecorded from there",
                    self._record[0].path,
                    "the disk took too long"
                    if self._record_err == errno.ETIMEDOUT
                    else os.strerror(self._record_err),
                )

    def _open_recording(self) -> int:
        """The recording file's descriptor (-1 when not recording); its `Recording` owns it."""
        if self._record is None:
            return -1
        return self._record[0].take()

    def _write_header(self, fd: int, master: int) -> None:
        assert self._record is not None
        rows, cols = window_size(master) or DEFAULT_SIZE
        try:
            write_header(fd, rows, cols, self._record[1])
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot write recording file: {exc.strerror}", self._record[0].path
            ) from None

    def _end_recording(self, pump: core.Pump) -> None:
        # Registered once the child runs and the loop is set up: the session happened.
        assert self._record is not None
        self._record[0].session_ran()
        self._record_err = pump.finish_recording(_RECORD_FINISH_MS)

    def _later(self, undo: Callable[..., object], *args: object) -> None:
        """Register ``undo(*args)`` to run at the end (see `defer`)."""
        defer(self._undo, undo, *args)

    def _start(self) -> int:
        term = self._term = UserTerminal(self._stdin_fd, self._stdout_fd, self._undo)
        # Listen for SIGWINCH before reading the size, so that no window change is lost.
        wake_fd = term.catch_signals(_CAUGHT, _KEPT_IF_IGNORED)
        rows, cols = term.window() or DEFAULT_SIZE
        record_fd = self._open_recording()
        # Direct output needs a descriptor of stdout for the relay's own non-blocking writes
        # that the child does not share: O_NONBLOCK on the child's stdout would make its
        # writes fail with EAGAIN. Where there is none (a socket), the output is copied.
        if self._direct and term.private_output() is None:
            self._direct = False
            log.debug("bottle relay: stdout_fd %d cannot be reopened privately (a socket?): "
                      "copying the output instead of direct output", self._stdout_fd)
        loop_in, loop_out = term.loop_descriptors()
        # Raw before the child starts: in direct mode its first output goes straight to the
        # terminal and must meet the same settings as the rest. Direct mode keeps the output
        # processing: no pty does it for what the child writes there.
        term.make_raw(keep_output=self._direct)

        master, slave = os.openpty()
        self._later(os.close, master)
        try:
            try:
                fcntl.ioctl(master, termios.TIOCSWINSZ, WINSIZE.pack(rows, cols, 0, 0))
            except OSError as exc:
                self._size_refused(exc)
                with contextlib.suppress(OSError):
                    fcntl.ioctl(master, termios.TIOCSWINSZ, WINSIZE.pack(*DEFAULT_SIZE, 0, 0))
            if record_fd >= 0:
                self._write_header(record_fd, master)
            for stream in (sys.stdout, sys.stderr):
                try:
                    if stream is not None:
                        stream.flush()
                except (OSError, ValueError):
                    pass
            try:
                pid = core.spawn(self._path, self._args, self._envp, slave,
                                 term.out_fd if self._direct else -1)  # fmt: skip
            except OSError as exc:
                raise _spawn_error(exc, self._args[0]) from None
        finally:
            os.close(slave)
        child = Child(pid, threaded=wake_fd < 0)
        self._later(child.end)

        os.set_blocking(master, False)
        if self._resize is not None and wake_fd >= 0:
            self._worker = ResizeWorker(self._resize, self._machine, self._environ)
            self._later(self._worker.stop)

        pump = core.Pump(
            loop_in,
            loop_out,
            master,
            wake_fd,
            child.fd,
            term.size_fd,
            winch=self._worker is None,
            in_tty=term.in_tty,
            hold_ms=_HOLD_MS if self._hold else 0,
            intr=term.interrupt_char if self._hold else -1,
            record_fd=record_fd,
            record_input=self._record is not None and self._record[2],
        )
        if record_fd >= 0:
            self._later(self._end_recording, pump)
        return self._relay(pump, child)

    def _relay(self, pump: core.Pump, child: Child) -> int:
        status: int | None = None
        while status is None:
            event = pump.run()
            if event == core.EV_SIGNAL:
                status = self._on_signals(pump, child)
            elif event == core.EV_CHILD:
                status = child.wait(None)
            elif event == core.EV_HUP:
                return self._hang_up(child)
            elif event == core.EV_INTR:
                status = self._abort(child)
            elif event == core.EV_EOF:
                # The child let go of its pty but may run on, and the keyboard is no longer
                # read: give the user their terminal back, so that Ctrl-C is a signal again
                # (which the relay forwards).
                assert self._term is not None
                self._term.give_back()
        # The child's last output may still be in flight (or a grandchild may hold the pty).
        pump.drain(_DRAIN_IDLE_MS, _DRAIN_CAP_MS)
        return status

    def _on_signals(self, pump: core.Pump, child: Child) -> int | None:
        status = None
        for sig in pump.signals():
            if sig == signal.SIGCHLD:
                status = child.poll()
            elif sig in _FORWARDED:
                child.signal(sig)
            elif sig == signal.SIGWINCH:
                self._resized(pump)
            elif sig == signal.SIGTSTP:
                self._suspend(pump, child)
            elif sig == signal.SIGCONT:
                self._continue(pump, child)
        return status

    def _resized(self, pump: core.Pump) -> None:
        try:
            size = pump.resize()
        except OSError as exc:
            self._size_refused(exc)
            return
        if size is not None and self._worker is not None:
            self._worker.post(size)

    def _size_refused(self, exc: OSError) -> None:
        """The pty refused a window size: say so once per run, and relay on."""
        if self._size_reported:
            return
        self._size_reported = True
        import logging

        logging.getLogger(__name__).warning(
            "bottle relay: the pty refused the window size (%s); the session goes on at the "
            "size it has (24x80 if none was set); further failures are not reported",
            exc.strerror or exc,
        )

    def _suspend(self, pump: core.Pump, child: Child) -> None:
        """SIGTSTP: stop with the user's terminal given back, the way shells do."""
        assert self._term is not None
        if self._direct:
            # A copying relay that stops stops the child's output with it; a child writing to
            # the terminal itself must be stopped too, or it would write over the user's shell.
            child.signal(signal.SIGSTOP)
        self._term.stop()
        self._continue(pump, child)

    def _continue(self, pump: core.Pump, child: Child) -> None:
        """SIGCONT: raw mode again, and the size (it may have changed while stopped)."""
        assert self._term is not None
        self._term.resume()
        self._resized(pump)
        if self._direct:
            child.signal(signal.SIGCONT)

    def _hang_up(self, child: Child) -> int:
        """The user's terminal went away: end the child (SIGHUP, then SIGKILL)."""
        child.signal(signal.SIGHUP)
        status = child.wait(KILL_GRACE)
        if status is None:
            child.signal(signal.SIGKILL)
            status = child.wait(None)
        assert status is not None
        return status

    def _abort(self, child: Child) -> int:
        """Ctrl-C typed while the child was still starting (its input held): the user gave
        up waiting. What was typed is dropped (never replayed into the child), the child gets
        SIGINT and, if it does not end within a grace, SIGKILL; the status is 130."""
        child.signal(signal.SIGINT)
        if child.wait(KILL_GRACE) is None:
            child.signal(signal.SIGKILL)
            child.wait(None)
        return 128 + signal.SIGINT


def _spawn_error(exc: OSError, program: bytes) -> OSError:
    """The spawn error, naming the program (and the failed step when it was not exec)."""
    code = exc.errno or errno.EINVAL
    message = os.strerror(code)
    if len(exc.args) > 2:
        message = f"{message} (in the child, at {exc.args[2]})"
    return OSError(code, message, os.fsdecode(program))
