"""The file a session is recorded into: created before anything else, removed if never used;
and its first line."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from types import TracebackType

from bottle.errors import InvalidInputError

__all__ = ["Recording", "write_header"]

# The recording may hold whatever the session showed: private to its owner, whatever the umask.
MODE = 0o600
# The host variables a recording's header names (asciicast v2 "env"); nothing else of the
# environment goes into the file, so secrets passed to the child never do.
HEADER_ENV = ("TERM", "SHELL")


def write_header(fd: int, rows: int, cols: int, title: str) -> None:
    """Write an asciicast v2 header line to ``fd``: the terminal's size, the time now, TERM and
    SHELL from this process's environment, and ``title``. The copy loop (the relay's Pump, a
    holder's Hub) writes the events after it."""
    header: dict[str, object] = {
        "version": 2,
        "width": cols,
        "height": rows,
        "timestamp": int(time.time()),
    }
    env = {name: os.environ[name] for name in HEADER_ENV if name in os.environ}
    if env:
        header["env"] = env
    header["title"] = title
    line = (json.dumps(header, ensure_ascii=False) + "\n").encode()
    while line:
        line = line[os.write(fd, line) :]


class Recording:
    """A new recording file, created at once: `Recording("session.cast")`.

    Creating it is the check that it can be written: an existing file (never overwritten), a
    missing directory or one that cannot take a new file is an `InvalidInputError`, before
    anything else has run. The file is mode 0600 whatever the umask. Hand it to
    `bottle.relay.run(record=...)` or a bottle's `exec_agent(record=...)` for one session;
    `close()` (or leaving its `with` block) removes the file again when no session ever ran
    into it, so a session that could not start leaves nothing behind to block the next try.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInputError(f"record must be a path, not {type(path).__name__}")
        text = os.fspath(path)
        if not isinstance(text, str):
            raise InvalidInputError(f"record must be a text path, not {type(text).__name__}")
        if not text:
            raise InvalidInputError("record: the recording file name is empty")
        if "\0" in text:
            raise InvalidInputError("record: the recording file name contains a NUL byte")
        self.path = text
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(text, flags, MODE)
        except FileExistsError:
            raise InvalidInputError(
                f"recording file {text!r} already exists (bottle never overwrites one)"
            ) from None
        except OSError as exc:
            parent = os.path.dirname(text) or "."
            reason = exc.strerror or str(exc)
            if not os.path.isdir(parent):
                reason = f"directory {parent!r} does not exist"
            elif exc.errno == errno.ENOENT:  # /proc, /sys: a directory that takes no new file
                reason = f"directory {parent!r} takes no new files ({reason})"
            raise InvalidInputError(f"cannot create recording file {text!r}: {reason}") from None
        self._fd = fd
        self._used = False
        try:
            os.fchmod(fd, MODE)  # the umask took bits from the mode os.open was given
        except OSError as exc:
            self.close()
            raise InvalidInputError(
                f"cannot make recording file {text!r} private (mode 0600): {exc.strerror}"
            ) from None

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else "used" if self._used else "unused"
        return f"Recording({self.path!r}, {state})"

    @property
    def closed(self) -> bool:
        """True once `close()` has run."""
        return self._fd < 0

    @property
    def used(self) -> bool:
        """True once a session has run into the file."""
        return self._used

    def take(self) -> int:
        """The file's descriptor, for the one session that records into it."""
        if self._fd < 0:
            raise InvalidInputError(f"recording file {self.path!r} is closed")
        if self._used:
            raise InvalidInputError(f"recording file {self.path!r} already holds a session")
        return self._fd

    def session_ran(self) -> None:
        """Mark the file as holding a session: it stays when closed."""
        self._used = True

    def close(self) -> None:
        """Close the file; remove it if no session ran into it. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            if not self._used:
                with contextlib.suppress(OSError):
                    st = os.fstat(fd)
                    now = os.lstat(self.path)
                    # Only the file we made: it may have been moved or replaced meanwhile.
                    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                        os.unlink(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> Recording:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without close(): still leave no empty file behind.
        if getattr(self, "_fd", -1) >= 0:
            with contextlib.suppress(Exception):
                self.close()
