"""The user's terminal: its size, raw mode, and private non-blocking descriptors."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import termios
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


def raw(attrs: list[Any]) -> list[Any]:
    """Raw-mode copy of a termios attribute list (like cfmakeraw)."""
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
    no /proc), and then the relay shares ``fd`` as in copy mode.
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
