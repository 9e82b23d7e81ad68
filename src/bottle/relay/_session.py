"""One relay run: `run` checks its arguments, `Session` sets up, relays and undoes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import stat
import sys
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from bottle.relay._children import KILL_GRACE, Child, ResizeWorker
from bottle.relay._impl import core
from bottle.relay._recording import Recording
from bottle.relay._tty import DEFAULT_SIZE, WINSIZE, private_writer, raw, window_size

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
# The host variables a recording's header names (asciicast v2 "env"); nothing else of the
# environment goes into the file, so secrets passed to the child never do.
_RECORD_ENV = ("TERM", "SHELL")

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
    up on the PATH of ``env`` (default: ``os.environ``), which is also the child's environment.
    When ``stdin_fd`` is a terminal it is in raw mode while the child runs and its exact settings
    are restored on every way out (and as soon as the child lets go of its pty, so that Ctrl-C
    reaches it as a signal). A negative or closed ``stdin_fd`` means no input: the child sees
    end-of-input at once. ``resize_command`` is a command template run (off the copy loop, at
    most one at a time, latest size wins) after each window change, with ``{rows}``,
    ``{cols}`` and ``{machine}`` replaced.

    ``hold_until_raw`` is for children that flush their input when they switch their terminal
    to raw mode (smolvm ``-i -t``): keys, piped bytes and the end of input are held from the
    child's start until its pty leaves canonical mode or it exits (at most 30 s). Without it
    input goes through at once.

    ``output="copy"`` makes the pty the child's stdout and stderr, and the relay copies what it
    writes (with the pty's own output processing, e.g. ``\n`` to ``\r\n``). ``"direct"`` gives
    the child ``stdout_fd`` itself as stdout and stderr, untouched and uncopied: the pty is only
    its stdin and controlling terminal (what it writes to ``/dev/tty`` is still copied). That
    suits terminal clients that run raw and write finished output, like ``smolvm machine exec
    -i -t``, and costs the relay nothing for everything they print.

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
    SIGQUIT (and the `signal.set_wakeup_fd`) while it runs, and restores the previous ones;
    those of the last five that were ignored stay ignored and are not forwarded. Called from
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


def _quietly(undo: Callable[..., object], *args: object) -> None:
    # termios.error: e.g. the user's terminal has gone away; nothing to restore.
    with contextlib.suppress(OSError, termios.error):
        undo(*args)


def _on_signal(signum: int, frame: object) -> None:
    """Python-level handler: the work happens in the loop, woken by the wakeup-fd byte."""


class Session:
    """One relay run; every setup step registers its undo as soon as it has succeeded."""

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
        self._saved_attrs: list[Any] | None = None
        self._released = False  # the terminal was given back before the end
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
        header: dict[str, object] = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(time.time()),
        }
        env = {name: os.environ[name] for name in _RECORD_ENV if name in os.environ}
        if env:
            header["env"] = env
        header["title"] = self._record[1]
        line = (json.dumps(header, ensure_ascii=False) + "\n").encode()
        try:
            while line:
                line = line[os.write(fd, line) :]
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
        """Register ``undo(*args)`` to run at the end; a terminal or descriptor already gone
        (OSError, termios.error) leaves nothing to undo there, and the other undos still run."""
        self._undo.callback(_quietly, undo, *args)

    def _start(self) -> int:
        in_fd, out_fd = self._stdin_fd, self._stdout_fd
        try:
            fcntl.fcntl(out_fd, fcntl.F_GETFL)
        except (OSError, ValueError):
            raise ValueError(f"stdout_fd {out_fd} is not an open file descriptor") from None
        try:
            if in_fd >= 0:
                fcntl.fcntl(in_fd, fcntl.F_GETFL)
        except OSError:
            in_fd = -1
        if in_fd < 0:  # no input at all: the child sees end-of-input at once
            in_fd = self._stdin_fd = -1
        self._block_sigpipe()
        in_tty = in_fd >= 0 and os.isatty(in_fd)
        out_tty = os.isatty(out_fd)
        # Listen for SIGWINCH before reading the size, so that no window change is lost.
        wake_fd = self._catch_signals()
        ttys = [fd for fd, is_tty in ((in_fd, in_tty), (out_fd, out_tty)) if is_tty]
        size_fd = ttys[0] if ttys else -1
        size = None
        for fd in ttys:
            size = window_size(fd)
            if size:
                size_fd = fd
                break
        rows, cols = size or DEFAULT_SIZE
        record_fd = self._open_recording()
        # Raw before the child starts: in direct mode its first output goes straight to the
        # terminal and must meet the same settings as the rest.
        if in_tty:
            self._saved_attrs = termios.tcgetattr(in_fd)
            saved = self._saved_attrs
            termios.tcsetattr(in_fd, termios.TCSANOW, raw(saved))
            self._later(termios.tcsetattr, in_fd, termios.TCSANOW, saved)

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
                pid = core.spawn(
                    self._path, self._args, self._envp, slave, out_fd if self._direct else -1
                )
            except OSError as exc:
                raise _spawn_error(exc, self._args[0]) from None
        finally:
            os.close(slave)
        child = Child(pid, threaded=wake_fd < 0)
        self._later(child.end)

        loop_in, loop_out = self._nonblocking(in_fd, out_fd, in_tty, out_tty)
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
            size_fd,
            winch=self._worker is None,
            in_tty=in_tty,
            hold_ms=_HOLD_MS if self._hold else 0,
            record_fd=record_fd,
            record_input=self._record is not None and self._record[2],
        )
        if record_fd >= 0:
            self._later(self._end_recording, pump)
        return self._relay(pump, child)

    def _block_sigpipe(self) -> None:
        """Block SIGPIPE in this thread for the run, so a reader gone away is only EPIPE.

        A write's SIGPIPE goes to the writing thread: blocked there it cannot kill a host that
        keeps SIGPIPE at its default (leaving the terminal raw). The disposition is left alone
        (it is process-wide, and only the main thread may change it); one raised meanwhile is
        taken off before the mask is restored. The child starts with an empty mask.
        """
        old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
        if signal.SIGPIPE in old:
            return

        def unblock() -> None:
            if signal.SIGPIPE in signal.sigpending():
                signal.sigwait([signal.SIGPIPE])
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGPIPE])

        self._later(unblock)

    def _catch_signals(self) -> int:
        """Install handlers and the wakeup pipe; its read end, or -1 off the main thread."""
        rfd, wfd = os.pipe()
        self._later(os.close, wfd)
        self._later(os.close, rfd)
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        try:
            previous_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: no signal handling (see run's docstring)
            return -1
        self._later(signal.set_wakeup_fd, previous_fd)
        for sig in _CAUGHT:
            if sig in _KEPT_IF_IGNORED and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            previous = signal.signal(sig, _on_signal)
            # None: the previous handler was not set from Python; the default is the best guess.
            restore = signal.SIG_DFL if previous is None else previous
            self._later(signal.signal, sig, restore)
        return rfd

    def _nonblocking(self, in_fd: int, out_fd: int, in_tty: bool, out_tty: bool) -> tuple[int, int]:
        """Descriptors for the loop, non-blocking without leaving O_NONBLOCK on shared ones.

        A terminal is reopened by name: the new open file description is private, so its
        O_NONBLOCK is invisible to other processes. In direct mode the child's own output goes
        to ``out_fd`` too, so a pipe or device there is reopened privately as well (see
        `_private_writer`). Anything else gets O_NONBLOCK for the run and its exact original
        flags back afterwards.
        """
        private: dict[int, int] = {}  # device → reopened fd

        def reopen(fd: int) -> int | None:
            try:
                device = os.fstat(fd).st_rdev
                if device in private:
                    return private[device]
                new = os.open(os.ttyname(fd), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                return None
            if os.fstat(new).st_rdev != device:
                os.close(new)
                return None
            private[device] = new
            self._later(os.close, new)
            return new

        loop_in = (reopen(in_fd) if in_tty else None) if in_fd >= 0 else -1
        loop_out = reopen(out_fd) if out_tty else None
        if loop_out is None and self._direct:
            # The child writes to out_fd itself and must find it exactly as it was given
            # (O_NONBLOCK there would make its writes fail with EAGAIN).
            loop_out = private_writer(out_fd)
            if loop_out is not None and loop_out != out_fd:
                self._later(os.close, loop_out)
        shared = [fd for fd, new in ((in_fd, loop_in), (out_fd, loop_out)) if new is None]
        originals = {fd: fcntl.fcntl(fd, fcntl.F_GETFL) for fd in shared}

        def restore() -> None:
            for fd, flags in originals.items():
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)

        self._later(restore)
        for fd, flags in originals.items():
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        return (in_fd if loop_in is None else loop_in), (out_fd if loop_out is None else loop_out)

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
            elif event == core.EV_EOF:
                # The child let go of its pty but may run on, and the keyboard is no longer
                # read: give the user their terminal back, so that Ctrl-C is a signal again
                # (which the relay forwards).
                self._give_back_terminal()
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

    def _give_back_terminal(self) -> None:
        if self._saved_attrs is not None and not self._released:
            self._released = True
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._stdin_fd, termios.TCSANOW, self._saved_attrs)

    def _suspend(self, pump: core.Pump, child: Child) -> None:
        """SIGTSTP: give the user their terminal back and stop, the way shells do.

        With the default action in place the kernel applies its rule for orphaned process
        groups (under `setsid`, or when the shell died): there the stop is discarded rather
        than leaving the relay stopped with nobody to continue it. Either way the terminal is
        set up again once the kill returns.
        """
        if self._direct:
            # A copying relay that stops stops the child's output with it; a child writing to
            # the terminal itself must be stopped too, or it would write over the user's shell.
            child.signal(signal.SIGSTOP)
        if self._saved_attrs is not None and not self._released:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._stdin_fd, termios.TCSANOW, self._saved_attrs)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, _on_signal)
        self._continue(pump, child)

    def _continue(self, pump: core.Pump, child: Child) -> None:
        """SIGCONT: raw mode again, and the size (it may have changed while stopped)."""
        if self._saved_attrs is not None and not self._released:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._stdin_fd, termios.TCSANOW, raw(self._saved_attrs))
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


def _spawn_error(exc: OSError, program: bytes) -> OSError:
    """The spawn error, naming the program (and the failed step when it was not exec)."""
    code = exc.errno or errno.EINVAL
    message = os.strerror(code)
    if len(exc.args) > 2:
        message = f"{message} (in the child, at {exc.args[2]})"
    return OSError(code, message, os.fsdecode(program))
