"""What a streamed `smolvm machine exec` is made of, for the full path and the light one alike.

`bottle exec NAME CMD` with bottle's cache warm is one smolvm call, so its cost is mostly its
own start-up, and every standard module counts there (`re`, `json`, `subprocess`, `threading`,
`argparse`, `dataclasses`: each several ms). `bottle._quickexec` runs such a plain exec with
nothing but this module, `bottle._cache` and `os`; `bottle.smolvm` and
`bottle.backend.smolmachines` build and read the same call with these same pieces: the exec
argv, the guest wrapper and the lines it writes, the filter that takes those lines out of
stderr, the hold on a last line that may be smolvm's `Error: `, the names bottle accepts, the
smolvm executable's identity and the cache keys. So this module imports `os` only, and uses no
regular expressions.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a few ms)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

# --- names ---------------------------------------------------------------------------------

_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")
_ALNUM = _LETTERS | _DIGITS
_NAME_CHARS = _ALNUM | frozenset("_-")
MACHINE_NAME_MAX = 128
USER_NAME_MAX = 32
_ENV_FIRST = _LETTERS | frozenset("_")
_ENV_CHARS = _ALNUM | frozenset("_")
_USER_CHARS = _ALNUM | frozenset("_.-")


def machine_name_problem(name: str) -> str | None:
    """What is wrong with `name` as a machine name, by smolvm's validate_vm_name: first char
    alphanumeric, then [A-Za-z0-9_-], no "--", no trailing "-", at most 128 characters."""
    if not name:
        return "it is empty"
    if len(name) > MACHINE_NAME_MAX:
        return f"it is longer than {MACHINE_NAME_MAX} characters"
    if name[0] not in _ALNUM or not all(c in _NAME_CHARS for c in name):
        return "it must start with a letter or digit and contain only letters, digits, '_' and '-'"
    if "--" in name:
        return "it contains '--'"
    if name.endswith("-"):
        return "it ends with '-'"
    return None


def env_name_chars(name: str) -> bool:
    """Whether `name` is a shell identifier, `[A-Za-z_][A-Za-z0-9_]*`."""
    return bool(name) and name[0] in _ENV_FIRST and all(c in _ENV_CHARS for c in name)


def user_name_ok(name: str) -> bool:
    """Whether `name` is a portable user name (useradd's rules without the odd corners: no
    leading '-' or digit, no ':' or '/'): `[A-Za-z_][A-Za-z0-9_.-]*` with an optional final
    `$`, at most 32 characters."""
    body = name[:-1] if name.endswith("$") else name
    return (
        len(name) <= USER_NAME_MAX and bool(body) and body[0] in _ENV_FIRST
        and all(c in _USER_CHARS for c in body)
    )  # fmt: skip


def guest_path_ok(path: str) -> bool:
    """Whether `path` is absolute, without NUL, '.' or '..' segments."""
    return (
        path.startswith("/") and "\0" not in path
        and not any(seg in (".", "..") for seg in path.split("/"))
    )  # fmt: skip


def is_id_token(text: str) -> bool:
    """Whether `text` is how `id` starts its output: `uid=N` or `uid=N(name)`, the name
    without parentheses or white space (as kept in bottle's cache)."""
    if not text.startswith("uid="):
        return False
    rest = text[4:]
    digits = len(rest) - len(rest.lstrip("0123456789"))
    number, name = rest[:digits], rest[digits:]
    if not number:
        return False
    if not name:
        return True
    inner = name[1:-1]
    return (
        name.startswith("(") and name.endswith(")")
        and not any(c in "()" or c.isspace() for c in inner)
    )  # fmt: skip


def home_for(user: str) -> str:
    """The home directory bottle assumes for a guest user."""
    if user == "root":
        return "/root"
    return f"/home/{user}"


def user_env(user: str) -> list[str]:
    """`HOME=…`, `USER=…` for `user` (runuser without `-l` leaves them as they were)."""
    return [f"HOME={home_for(user)}", f"USER={user}"]


def user_switch(user: str, running_as: str) -> list[str] | None:
    """What goes before a guest command to run it as `user` where smolvm runs commands as
    `running_as`: nothing, `runuser -u USER --` from root (never `-l`: a login PAM session can
    hang on a minimal guest), or None: it cannot be done."""
    if running_as == user:
        return []
    if running_as == "root":
        return ["runuser", "-u", user, "--"]
    return None


# --- the smolvm executable and what is kept of it -------------------------------------------

MIN_VERSION = (1, 0, 2)
# A large paste into an `-i`/`-t` session can deadlock smolvm before 1.8.1 (its frames went out
# synchronously; writer thread since commit 4e80aab5, smolvm issue #926).
PASTE_SAFE_VERSION = (1, 8, 1)
# Guest commands run as the image's USER for `-i`/`-t` since smolvm 1.3.0 (commit 5bbffccf) and
# for captured exec since 1.6.0 (957bd755); in between the two kinds can differ.
INTERACTIVE_USER_SINCE = (1, 3, 0)
CAPTURED_USER_SINCE = (1, 6, 0)
# The kinds of bottle's cache entries (`bottle._cache`): an installed smolvm's answers (its
# version, whether `exec --help` shows `--user`), and who a machine runs guest commands as.
FACTS = "smolvm"
GUEST = "guest"


def which(name: str, search: str) -> str | None:
    """The first executable file `name` in the directories of `search`, as `shutil.which`
    finds it (shutil, with the archive modules it loads, would be a few ms of start-up)."""
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


# Its real path, device, inode, size, mtime and ctime.
Identity = tuple[str, int, int, int, int, int]


def identity(path: str) -> Identity:
    """The file identity of a smolvm executable: its real path, device, inode, size, mtime and
    ctime. Installing another smolvm, in place or not, changes at least one of them, so an answer
    kept under this key is never the answer of another build. Raises OSError."""
    st = os.stat(path)
    return (
        os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
    )  # fmt: skip


def kinds_differ(version: tuple[int, int, int]) -> bool:
    """Whether this smolvm runs `-i`/`-t` commands as another user than captured ones."""
    return INTERACTIVE_USER_SINCE <= version < CAPTURED_USER_SINCE


def kept_version(facts: Mapping[str, object] | None) -> tuple[int, int, int] | None:
    """The version in a smolvm's kept facts, if they hold a sound one."""
    kept = (facts or {}).get("version")
    if isinstance(kept, list) and len(kept) == 3 and all(type(n) is int for n in kept):
        return kept[0], kept[1], kept[2]
    return None


def guest_key(
    smolvm: Identity, machine: str, kind: bool, environ: Mapping[str, str]
) -> list[object]:
    """The cache key of who `machine` runs guest commands as: the smolvm build (its answers
    differ by release), where it keeps its machines, the machine's name and the kind of exec. A
    machine deleted and made again under the same name has the same key: the check in the guest
    (the wrapper) is what notices it."""
    data = [environ.get(v, "") for v in ("SMOLVM_DATA_DIR", "XDG_DATA_HOME", "HOME")]
    return [*smolvm, *data, str(machine), kind]


def kept_guest(value: Mapping[str, object] | None) -> tuple[str, str] | None:
    """(user, id token) of a kept guest entry, if it holds sound ones."""
    if value is None:
        return None
    user, ident = value.get("user"), value.get("id")
    if isinstance(user, str) and isinstance(ident, str) and is_id_token(ident):
        return user, ident
    return None


# --- the exec call --------------------------------------------------------------------------


def exec_argv(
    name: str,
    command: Sequence[str],
    *,
    tty: bool = False,
    interactive: bool = False,
    env_names: Iterable[str] = (),
    workdir: str | None = None,
    user: str | None = None,
) -> list[str]:
    """Arguments of `smolvm machine exec`, from values already checked (see
    `bottle.smolvm.exec_args`, which checks them)."""
    args = ["machine", "exec", "--name", name]
    if tty:
        args += ["-i", "-t"]
    elif interactive:
        args.append("-i")
    if workdir is not None:
        args += ["-w", workdir]
    if user is not None:
        args += ["--user", user]
    for key in env_names:
        args += ["-e", key]
    return [*args, "--", *command]


# What bottle's wrapper around a guest command writes on its stderr before the command:
# `bottle-exec NONCE run` as it hands over to the command, or `bottle-exec NONCE refused: <id's
# output>` when it will not run it (then it exits 125).
MARK_RUN = "run"
MARK_REFUSED = "refused: "
# The status of a command the check in the guest refused to run (docker's, for a command that
# could not be run).
REFUSED = 125


def mark_prefix(nonce: str) -> str:
    """The start of each line the wrapper of the call with `nonce` writes."""
    return f"bottle-exec {nonce} "


# The wrapper of a streamed guest command (`run_command`, a copy's tar). $1: this call's nonce;
# $2: the kept `id` token the guest must still start with, empty for no check. It says on
# stderr that it hands over to the command, or that it will not (with the guest's `id`; exit
# 125, nothing run): `MarkFilter` takes those lines out. On a terminal it says nothing (a line
# there would be the user's to read): the caller asks the guest itself after a 125.
WRAP = (
    'n=$1 k=$2; shift 2; if [ -n "$k" ]; then i=$(id); case "$i" in "$k "*) ;; *) '
    f'[ -t 2 ] || printf "{mark_prefix("%s")}{MARK_REFUSED}%s\\n" "$n" "$i" >&2; '
    f"exit {REFUSED};; esac; fi; "
    f'[ -t 2 ] || printf "{mark_prefix("%s")}{MARK_RUN}\\n" "$n" >&2; exec "$@"'
)


def wrapped(nonce: str, check: str, command: Sequence[str]) -> list[str]:
    """`command` behind the wrapper; `check` is the kept `id` token, or "" for none."""
    return ["/bin/sh", "-c", WRAP, "bottle-exec", nonce, check, *command]


def new_nonce() -> str:
    """A fresh nonce for one call's wrapper lines."""
    return os.urandom(8).hex()


# A longer first line is not the wrapper's (`id` lists the groups, a few hundred bytes).
_MARK_MAX = 64 * 1024


class MarkFilter:
    """The wrapper's lines, taken out of a guest command's stderr.

    Until one of them has come, a line on stderr is held only while it could still be one (its
    start so far is the nonce's prefix): what comes before the wrapper's line is smolvm's own,
    written in whole lines, and the command has not started. After it, nothing is held.
    `started`: the command was handed over to (so it may have run, printed, read input).
    `refusal`: the wrapper's refusal (the guest's `id` output): the command did not run.
    Settled once either is known, or stderr has ended without them.
    """

    def __init__(self, nonce: str) -> None:
        self._prefix = mark_prefix(nonce).encode()
        self.started = False
        self.refusal: str | None = None
        self._done = False
        self._held = b""
        self._passing = False  # within a line that is not the wrapper's: through to its end

    def is_settled(self) -> bool:
        return self._done

    def _settle(self) -> None:
        self._done = True

    def filter(self, data: bytes) -> bytes:
        """What of `data` goes on (held bytes included once they cannot be a mark)."""
        if self.is_settled():
            return data
        data, self._held = self._held + data, b""
        out = bytearray()
        while data:
            end = data.find(b"\n") + 1
            line = data[:end] if end else data
            if self._passing:
                out += line
                self._passing = not end
            elif len(line) > _MARK_MAX or not (
                line.startswith(self._prefix) or self._prefix.startswith(line)
            ):
                self._passing = True
                continue
            elif not end:
                self._held = line  # it may still become the wrapper's line
            else:
                word = line[len(self._prefix) : -1].decode("utf-8", "replace")
                if word == MARK_RUN:
                    self.started = True
                elif word.startswith(MARK_REFUSED):
                    self.refusal = word[len(MARK_REFUSED) :]
                else:
                    out += line  # the wrapper's shape, not its word: nobody's to drop
                    data = data[len(line) :]
                    continue
                self._settle()
                return bytes(out + data[end:])
            data = data[len(line) :]
        return bytes(out)

    def end(self) -> bytes:
        """stderr has ended: what is still held goes on."""
        held, self._held = self._held, b""
        self._settle()
        return held


# smolvm prints its own failure as one last line, `Error: <Display>`, on the stderr that also
# carries the guest's (src/main.rs).
ERROR_START = b"Error: "
# A last line longer than this is the guest's: smolvm's own are short.
HELD_MAX = 64 * 1024
# After smolvm is gone, how long its stderr may stay open (a process it left behind holding
# the pipe) before the copy stops waiting for it.
STDERR_GRACE = 5.0


class StderrHold:
    """A streamed exec's stderr on its way to this process's: the wrapper's lines taken out
    (with `marks`), and a last line that starts like smolvm's `Error: ` held back, for whether
    it is smolvm's is known only at the end. `feed` says what to write now; `end` what was held
    (the caller decides by the status whether it is shown)."""

    def __init__(self, marks: MarkFilter | None = None) -> None:
        self._marks = marks
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._marks is not None:
            chunk = self._marks.filter(chunk)
            if not chunk:
                return b""
        data = self._held + chunk
        start = data.rfind(b"\n", 0, len(data) - 1) + 1  # the last line and its newline
        last = data[start:]
        self._held = b""
        if len(last) <= HELD_MAX and (last.startswith(ERROR_START) or ERROR_START.startswith(last)):
            data, self._held = data[:start], last
        return data

    def end(self) -> bytes:
        held, self._held = self._held, b""
        if self._marks is not None:
            held += self._marks.end()
        return held


def may_be_smolvms(status: int, kept: bytes) -> bool:
    """Whether `kept`, the stderr a streamed exec held back (`StderrHold.end`), may be smolvm's
    own failure rather than the guest's: one line, starting `Error: `, and a failing status.
    Only then is there anything to settle (`bottle.smolvm.finish_streamed`); otherwise it is the
    guest's, and is shown."""
    return status != 0 and kept.startswith(ERROR_START) and b"\n" not in kept.rstrip(b"\r\n")


def exit_status(returncode: int) -> int:
    """A process status as a shell reports it: death by signal N (`-N`) becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def write_all_quietly(fd: int, data: bytes) -> bool:
    """Write all of `data` to `fd`; False once `fd` takes no more (closed, a reader gone)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return False
    return True


class Ran:
    """A streamed exec that `bottle._quickexec` ran and hands to the full path to finish: the
    call (`argv`, the wrapper's `nonce`, the kept answer `found` = (user, id token) it rested
    on, None for none), its status as `subprocess` gives it (negative: killed by a signal), the
    stderr it held back (`kept`), and what the wrapper said (`started`, `refusal`)."""

    __slots__ = ("argv", "found", "kept", "nonce", "refusal", "started", "status")

    def __init__(
        self,
        argv: list[str],
        nonce: str,
        found: tuple[str, str] | None,
        status: int,
        kept: bytes,
        marks: MarkFilter,
    ) -> None:
        self.argv = argv
        self.nonce = nonce
        self.found = found
        self.status = status
        self.kept = kept
        self.started = marks.started
        self.refusal = marks.refusal
