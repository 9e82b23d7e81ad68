"""The user's side of a relay: the descriptors it was given, their terminal, and the signals.

`UserTerminal` is everything a relay borrows from the process and the user's terminal while it
runs: raw mode, window sizes, private non-blocking descriptors, signal handlers, the wakeup fd
and the signal mask. Each change registers its exact undo on the caller's `ExitStack` as soon
as it is made, so every way out puts everything back. It knows nothing of what is on the other
side (a child on a pty here; a session holder's socket for an attach client).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import struct
import termios
from collections.abc import Callable, Collection, Sequence
from contextlib import ExitStack
from typing import Any

# The size a pty gets when the user's terminal has none (rows, cols).
DEFAULT_SIZE = (24, 80)
WINSIZE = struct.Struct("HHHH")


def window_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(WINSIZE.size)))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def raw(attrs: list[Any], *, keep_output: bool = False) -> list[Any]:
    """Raw-mode copy of a termios attribute list (like cfmakeraw).

    ``keep_output`` leaves the output flags (OPOST, ONLCR, …) as they are: raw mode is for the
    keyboard, and a program writing to the terminal itself relies on its output processing.
    """
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    if not keep_output:
        oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def private_writer(fd: int) -> int | None:
    """A descriptor for the relay's own non-blocking writes to ``fd``, leaving ``fd``'s flags be.

    ``fd`` itself for a regular file (writes to it never wait); a new open file description for
    a pipe, FIFO or device, reopened through /proc; None where that cannot be had (a socket, or
    no /proc).
    """
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return fd
    try:
        new = os.open(
            f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
        )
    except OSError:
        return None
    mine = os.fstat(new)
    if (mine.st_dev, mine.st_ino) != (st.st_dev, st.st_ino):
        os.close(new)
        return None
    return new


def _quietly(undo: Callable[..., object], *args: object) -> None:
    # termios.error: e.g. the user's terminal has gone away; nothing to restore.
    with contextlib.suppress(OSError, termios.error):
        undo(*args)


def defer(stack: ExitStack, undo: Callable[..., object], *args: object) -> None:
    """Register ``undo(*args)`` on ``stack``; a terminal or descriptor already gone (OSError,
    termios.error) leaves nothing to undo there, and the other undos still run."""
    stack.callback(_quietly, undo, *args)


def on_signal(signum: int, frame: object) -> None:
    """Python-level handler: the work happens in the loop, woken by the wakeup-fd byte."""


class UserTerminal:
    """The user's side of one relay run: ``stdin_fd``, ``stdout_fd`` and their terminal.

    A negative or closed ``stdin_fd`` means no input (``in_fd`` is then -1); a closed
    ``stdout_fd`` is a ValueError. Every change made through it is undone by ``undo``.
    """

    def __init__(self, stdin_fd: int, stdout_fd: int, undo: ExitStack) -> None:
        try:
            fcntl.fcntl(stdout_fd, fcntl.F_GETFL)
        except (OSError, ValueError):
            raise ValueError(f"stdout_fd {stdout_fd} is not an open file descriptor") from None
        try:
            if stdin_fd >= 0:
                fcntl.fcntl(stdin_fd, fcntl.F_GETFL)
        except OSError:
            stdin_fd = -1
        self.in_fd = max(stdin_fd, -1)
        self.out_fd = stdout_fd
        self.in_tty = self.in_fd >= 0 and os.isatty(self.in_fd)
        self.out_tty = os.isatty(stdout_fd)
        self.size_fd = -1  # the terminal whose size the relay follows (see `window`)
        self.caught: frozenset[int] = frozenset()
        self._undo = undo
        self._saved: list[Any] | None = None
        self._keep_output = False
        self._released = False
        self._reopened: dict[int, int] = {}  # terminal device -> the relay's own descriptor
        self._private_out: int | None = None
        self._private_out_known = False

    def _later(self, undo: Callable[..., object], *args: object) -> None:
        defer(self._undo, undo, *args)

    # ------------------------------------------------------------------ signals

    def catch_signals(self, signals: Sequence[int], keep_ignored: Collection[int] = ()) -> int:
        """Take ``signals`` over for the run; the read end of the pipe their numbers arrive on.

        The handlers do nothing but wake the loop (`signal.set_wakeup_fd`). Python lets only
        the main thread install them: elsewhere nothing is caught and -1 is returned. Those of
        ``keep_ignored`` that the caller ignores stay ignored and are not caught (`caught` says
        which are). Each caught signal is unblocked in this thread for the run, whatever mask
        the process was started with (a parent's blocked SIGCHLD would hide the child's exit,
        a blocked SIGWINCH every resize); SIGPIPE is blocked in it, so that a reader gone away
        is only EPIPE for a host that keeps SIGPIPE at its default.

        At the end the caught signals are blocked first, then the handlers and the wakeup fd
        are put back, then the caller's mask: a signal arriving meanwhile meets the caller's
        own disposition, never a handler half put back (CPython's "Signal N ignored due to
        race condition"). A SIGPIPE raised during the run is taken off before its mask goes.
        """
        original = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
        self._later(self._restore_mask, original)
        rfd, wfd = os.pipe()
        self._later(os.close, wfd)
        self._later(os.close, rfd)
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        try:
            previous_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: no signal handling
            return -1
        self._later(signal.set_wakeup_fd, previous_fd)
        caught = []
        for sig in signals:
            if sig in keep_ignored and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            previous = signal.signal(sig, on_signal)
            # None: the previous handler was not set from Python; the default is the best guess.
            restore = signal.SIG_DFL if previous is None else previous
            self._later(signal.signal, sig, restore)
            caught.append(sig)
        self._later(signal.pthread_sigmask, signal.SIG_BLOCK, caught)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)
        self.caught = frozenset(caught)
        return rfd

    @staticmethod
    def _restore_mask(original: set[signal.Signals]) -> None:
        if signal.SIGPIPE not in original and signal.SIGPIPE in signal.sigpending():
            signal.sigwait([signal.SIGPIPE])
        signal.pthread_sigmask(signal.SIG_SETMASK, original)

    # ------------------------------------------------------------------ size

    def window(self) -> tuple[int, int] | None:
        """The user's window size (rows, cols), from stdin's terminal, else stdout's; None when
        neither has one. Sets `size_fd` to the terminal it came from."""
        ttys = [fd for fd, is_tty in ((self.in_fd, self.in_tty), (self.out_fd, self.out_tty))
                if is_tty]  # fmt: skip
        self.size_fd = ttys[0] if ttys else -1
        for fd in ttys:
            size = window_size(fd)
            if size:
                self.size_fd = fd
                return size
        return None

    # ------------------------------------------------------------------ descriptors

    def _reopen_tty(self, fd: int) -> int | None:
        """The relay's own open file description of the terminal behind ``fd``, by name."""
        try:
            device = os.fstat(fd).st_rdev
            if device in self._reopened:
                return self._reopened[device]
            new = os.open(os.ttyname(fd), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        if os.fstat(new).st_rdev != device:
            os.close(new)
            return None
        self._reopened[device] = new
        self._later(os.close, new)
        return new

    def private_output(self) -> int | None:
        """A descriptor of stdout's file for the relay's own non-blocking writes whose open
        file description nobody else has: the terminal or pipe reopened (a regular file as it
        is: writes to it never wait). None where none can be had: a socket, or a pipe on a
        system without /proc."""
        if not self._private_out_known:
            self._private_out_known = True
            out = self._reopen_tty(self.out_fd) if self.out_tty else None
            if out is None:
                out = private_writer(self.out_fd)
                if out is not None and out != self.out_fd:
                    self._later(os.close, out)
            self._private_out = out
        return self._private_out

    def loop_descriptors(self) -> tuple[int, int]:
        """Non-blocking (input, output) descriptors for the copy loop (input -1: none).

        Private ones where they can be had (see `private_output`; stdin's terminal is reopened
        too); any other gets O_NONBLOCK for the run and its exact original flags back after.
        Nothing else may then use it meanwhile: it is shared with whoever holds it.
        """
        loop_in = (self._reopen_tty(self.in_fd) if self.in_tty else None) if self.in_fd >= 0 else -1
        loop_out = self.private_output()
        shared = [fd for fd, new in ((self.in_fd, loop_in), (self.out_fd, loop_out)) if new is None]
        originals = {fd: fcntl.fcntl(fd, fcntl.F_GETFL) for fd in shared}

        def restore() -> None:
            for fd, flags in originals.items():
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)

        self._later(restore)
        for fd, flags in originals.items():
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        return (self.in_fd if loop_in is None else loop_in), (
            self.out_fd if loop_out is None else loop_out
        )

    # ------------------------------------------------------------------ modes

    def make_raw(self, *, keep_output: bool) -> None:
        """Raw mode on stdin's terminal, if it is one, until the end (see `raw`)."""
        if not self.in_tty:
            return
        self._saved = termios.tcgetattr(self.in_fd)
        self._keep_output = keep_output
        termios.tcsetattr(self.in_fd, termios.TCSANOW, raw(self._saved, keep_output=keep_output))
        self._later(termios.tcsetattr, self.in_fd, termios.TCSANOW, self._saved)

    @property
    def interrupt_char(self) -> int:
        """The byte the user types for SIGINT (VINTR), -1 when there is none: stdin is not a
        terminal, or the user's own settings had no signal characters (ISIG off)."""
        if self._saved is None or not self._saved[3] & termios.ISIG:
            return -1
        cc = self._saved[6][termios.VINTR]
        char = cc[0] if isinstance(cc, bytes) else int(cc)
        return -1 if char == (0 if os.uname().sysname == "Linux" else 0xFF) else char

    def _cooked(self) -> None:
        if self._saved is not None and not self._released:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.in_fd, termios.TCSANOW, self._saved)

    def give_back(self) -> None:
        """The user's own settings again for the rest of the run (raw mode is not set again)."""
        self._cooked()
        self._released = True

    def resume(self) -> None:
        """Raw mode again (after a stop), unless the terminal was given back."""
        if self._saved is not None and not self._released:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(
                    self.in_fd, termios.TCSANOW, raw(self._saved, keep_output=self._keep_output)
                )

    def stop(self) -> None:
        """SIGTSTP: the user's settings back, then stop the way shells do; returns once
        continued (`resume` sets raw mode again).

        With the default action in place the kernel applies its rule for orphaned process
        groups (under `setsid`, or when the shell died): there the stop is discarded rather
        than leaving the relay stopped with nobody to continue it.
        """
        self._cooked()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, on_signal)
