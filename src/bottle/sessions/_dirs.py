"""Where sessions live, and the checks that keep them one user's.

Every session has a directory of its own under the user's session directory:
``$XDG_RUNTIME_DIR/bottle/`` (a runtime directory is the user's alone, and is what the XDG
specification provides sockets for), or, where ``XDG_RUNTIME_DIR`` is unset or not absolute,
``$TMPDIR/bottle-UID/`` (``/tmp/bottle-UID/``), as tmux keeps ``/tmp/tmux-UID/``. Both are
created mode 0700. Before anything is read from or sent into one, bottle checks it (and each
session's directory and socket) with `lstat`: not a symlink, owned by this user, and (the
directories) open to nobody else; the parent of the session directory must be this user's or
sticky, so that nobody else can rename it away. Anything else is a `SessionPathError`.

A session's directory holds:

- ``session.json``: what was started (name, machine, argv, when; never a secret's value),
  written once by the starter;
- ``state.json``: what the holder knows (its pid, the clients attached, the exit status once
  finished, the teardown's outcome), replaced atomically as it changes;
- ``lock``: held (`flock`) by the holder for its whole life, so a holder that died (even of
  SIGKILL) shows as a free lock, whatever became of its pid;
- ``sock``: the holder's socket, ``holder.log``: its log, ``screen``: the last output once
  finished.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from bottle.errors import InvalidInputError, SessionPathError

# A sockaddr_un's path: 104 bytes on macOS and the BSDs, 108 on Linux, NUL included.
SOCKET_PATH_MAX = 103
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

SPEC = "session.json"
STATE = "state.json"
LOCK = "lock"
SOCKET = "sock"
LOG = "holder.log"
SCREEN = "screen"


def check_name(name: str) -> str:
    """A session name: a letter or digit, then up to 63 letters, digits, ``_``, ``.``, ``-``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidInputError(
            f"session name {name!r}: use a letter or digit, then letters, digits, '_', '.' "
            "or '-' (at most 64 characters)"
        )
    return name


def base_dir(environ: Mapping[str, str] | None = None) -> str:
    """The user's session directory (not created, not checked)."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "bottle")
    tmp = env.get("TMPDIR", "") or "/tmp"
    return os.path.join(tmp, f"bottle-{os.geteuid()}")


def _describe_mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def check_private_dir(path: str, what: str) -> None:
    """Refuse ``path`` unless it is a real directory of this user's that nobody else can use."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SessionPathError(f"{what} {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise SessionPathError(
            f"{what} {path} is a symlink; bottle refuses it (someone could be redirecting "
            "your sessions): remove it"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise SessionPathError(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise SessionPathError(
            f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); "
            "bottle refuses it"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SessionPathError(
            f"{what} {path} has mode {_describe_mode(st)}: others can reach into it; "
            "bottle needs 0700 (chmod 700 it)"
        )


def _check_parent(path: str) -> None:
    # Whoever can write to the parent can rename the directory away and put another in its
    # place, unless the parent is sticky (/tmp).
    parent = os.path.dirname(path)
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise SessionPathError(f"the directory {parent} for sessions: {exc.strerror}") from None
    mine = st.st_uid == os.geteuid()
    if not mine and stat.S_IMODE(st.st_mode) & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise SessionPathError(
            f"{parent} is writable by others and not sticky: a session directory there "
            "could be replaced by someone else; set XDG_RUNTIME_DIR to a directory of yours"
        )


def ensure_base(environ: Mapping[str, str] | None = None, *, create: bool = True) -> str | None:
    """The checked session directory; created (mode 0700) when missing and ``create``, else
    None when missing."""
    path = base_dir(environ)
    _check_parent(path)
    try:
        check_private_dir(path, "session directory")
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # another bottle made it meanwhile: checked below like any other
        except OSError as exc:
            raise SessionPathError(
                f"cannot create the session directory {path}: {exc.strerror}"
            ) from None
        check_private_dir(path, "session directory")
    return path


class SessionDir:
    """One session's directory and the files in it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = os.path.basename(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def socket_path(self) -> str:
        return self.file(SOCKET)

    def check(self) -> None:
        """Refuse the directory unless it is safely this user's (`SessionPathError`)."""
        check_private_dir(self.path, f"session {self.name!r}: directory")

    def check_socket(self) -> None:
        """Refuse the socket unless it is one, this user's, and not a symlink."""
        path = self.socket_path
        st = os.lstat(path)  # FileNotFoundError: the holder is gone (or never listened)
        if stat.S_ISLNK(st.st_mode):
            raise SessionPathError(f"session {self.name!r}: {path} is a symlink; refused")
        if not stat.S_ISSOCK(st.st_mode):
            raise SessionPathError(f"session {self.name!r}: {path} is not a socket; refused")
        if st.st_uid != os.geteuid():
            raise SessionPathError(
                f"session {self.name!r}: the socket {path} belongs to uid {st.st_uid}, not to "
                f"you (uid {os.geteuid()}); refused"
            )

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the session (None when missing or unreadable)."""
        try:
            fd = os.open(self.file(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, name: str, data: Mapping[str, Any]) -> None:
        """Replace a JSON file atomically (a reader sees the old one or the new one)."""
        tmp = self.file(f".{name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
            os.replace(tmp, self.file(name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def holder_alive(self) -> bool:
        """Whether a holder holds the session's lock (it dies with the holder)."""
        try:
            fd = os.open(self.file(LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)  # closing it also lets go of a lock taken here
        return False

    def take_lock(self) -> int | None:
        """This session's lock, held exclusively, as an open descriptor; None when a holder
        (or another bottle) has it."""
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd
