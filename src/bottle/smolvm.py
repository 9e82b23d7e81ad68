"""The smolvm command line: argv builders, executable lookup, version check, error mapping.

Facts come from smolvm's own command definitions (src/cli/machine.rs, 1.0.2 and later; the
fake smolvm's tests/fake_smolvm/README.md lists each with its source): `exec --name` is
long-only and its options must come before `--`; every other subcommand takes `-n NAME`;
`delete` prompts unless given `-f`; `status` and `ls` have `--json`; `cp SRC NAME:DST` uploads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from bottle import _cache, _log
from bottle import _execwire as ew
from bottle import _validate as check
from bottle import network as net
from bottle.errors import (
    BottleError,
    ConnectionLostError,
    InvalidInputError,
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    Message,
    Param,
    SmolvmCommandError,
    SmolvmError,
    SmolvmNotExecutableError,
    SmolvmNotFoundError,
    SmolvmTimeoutError,
    SmolvmTooOldError,
    SmolvmUsageError,
    SmolvmVersionError,
)

__all__ = [
    "DEFAULT_TIMEOUTS",
    "ENV_OVERRIDE",
    "LABELS_SINCE",
    "MIN_VERSION",
    "Marks",
    "OutputLine",
    "Smolvm",
    "Timeouts",
    "classify_failure",
    "clear_version_cache",
    "cp_args",
    "cp_out_args",
    "create_args",
    "delete_args",
    "exec_args",
    "find_executable",
    "identity",
    "is_registry_image",
    "ls_args",
    "parse_version",
    "read_version",
    "run_attached",
    "run_captured",
    "run_streamed",
    "start_args",
    "status_args",
    "stop_args",
]

log = _log.get_logger(__name__)

ENV_OVERRIDE = "BOTTLE_SMOLVM"
# 1.0.2 made machine names flags everywhere (`create -n`, `delete -n`); older CLIs need
# positional names, which this module does not speak.
MIN_VERSION = ew.MIN_VERSION
# `machine create --label KEY=VALUE`, read back by `ls --json` (src/cli/machine.rs, CreateCmd).
LABELS_SINCE = (1, 8, 0)


# --- argv builders (everything after the executable) -------------------------------------


# clap value types of `create` (src/cli/machine.rs, CreateCmd): `--cpus` is a u8, `--mem` a u32.
CPUS_MAX = 255
MEMORY_MIB_MAX = 2**32 - 1
# smolvm's image_source::classify (src/data/image_source.rs, v1.9.3): these are local images.
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_LOCAL_PREFIXES = ("/", "./", "../", "local:", "local-dir:")


def is_registry_image(image: str) -> bool:
    """True when smolvm would pull `image` from a registry rather than read it locally.

    smolvm decides by spelling, not by what exists: `-` (stdin), a path starting with `/`,
    `./` or `../`, or a name ending in `.tar`, `.tar.gz` or `.tgz` is local; anything else is a
    registry reference (`node:22`, `ghcr.io/x/y`, even `mydir` without `./`).
    """
    return not (
        image == "-" or image.startswith(_LOCAL_PREFIXES) or image.endswith(_ARCHIVE_SUFFIXES)
    )


def _bounded(value: int | None, what: Param, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInputError(
            Message(
                "{what} must be an integer from 1 to {maximum}, not {value!r}",
                what=what,
                maximum=maximum,
                value=value,
            )
        )
    return value


def create_args(
    name: str,
    *,
    image: str | None = None,
    cpus: int | None = None,
    memory_mib: int | None = None,
    network: bool = False,
    allow_hosts: Sequence[str] = (),
    allow_cidrs: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Arguments of `smolvm machine create`.

    `network` is `--net` (anything reachable). `allow_hosts` / `allow_cidrs` are
    `--allow-host` / `--allow-cidr`, one per entry: they imply `--net` and limit it to those
    (smolvm resolves each host at create; see `bottle.network`), even alongside `--net`.
    `labels` are `--label KEY=VALUE` (smolvm 1.8.0 and later; `ls --json` gives them back).
    """
    check.machine_name(name)
    args = ["machine", "create", "-n", name]
    if image is not None:
        check.no_nul(image, "image")
        if not image or image.startswith("-"):
            raise InvalidInputError(f"invalid image reference {image!r}")
        args += ["-I", image]
    if _bounded(cpus, Param("cpus"), CPUS_MAX) is not None:
        args += ["--cpus", str(cpus)]
    if _bounded(memory_mib, Param("memory_mib"), MEMORY_MIB_MAX) is not None:
        args += ["--mem", str(memory_mib)]
    if network:
        args.append("--net")
    for host in net.check_hosts(allow_hosts):
        args += ["--allow-host", host]
    for cidr in net.check_cidrs(allow_cidrs):
        args += ["--allow-cidr", cidr]
    for key, value in (labels or {}).items():
        check.no_nul(key, "label key")
        check.no_nul(value, "label value")
        if not key or "=" in key:
            # smolvm splits KEY=VALUE at the first '=' (src/util.rs parse_labels).
            raise InvalidInputError(f"invalid label key {key!r}")
        args += ["--label", f"{key}={value}"]
    return args


def start_args(name: str) -> list[str]:
    """Arguments of `smolvm machine start`."""
    return ["machine", "start", "-n", check.machine_name(name)]


def stop_args(name: str) -> list[str]:
    """Arguments of `smolvm machine stop`."""
    return ["machine", "stop", "-n", check.machine_name(name)]


def delete_args(name: str) -> list[str]:
    """Arguments of `smolvm machine delete`; always `-f` (without it smolvm prompts)."""
    return ["machine", "delete", "-n", check.machine_name(name), "-f"]


def status_args(name: str) -> list[str]:
    """Arguments of `smolvm machine status --json`."""
    return ["machine", "status", "-n", check.machine_name(name), "--json"]


def ls_args() -> list[str]:
    """Arguments of `smolvm machine ls --json`."""
    return ["machine", "ls", "--json"]


def exec_args(
    name: str,
    command: Sequence[str],
    *,
    tty: bool = False,
    interactive: bool = False,
    env_names: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
) -> list[str]:
    """Arguments of `smolvm machine exec`.

    `tty` gives `-i -t`, `interactive` alone `-i` (stdin forwarded, output as it comes).
    `env_names` become bare `-e KEY` options: smolvm copies each value from its own
    environment, so values never appear on a command line. `workdir` is `-w DIR` (every
    supported smolvm). `user` is `--user USER`, which smolvm has from 1.14.0 (known from its
    pull request #1148, not from source): pass it only when `smolvm machine exec --help` shows
    the option.
    """
    command = check.argv(command, "guest command argument", "command")
    if not command:
        raise InvalidInputError("the guest command is empty")
    return ew.exec_argv(
        check.machine_name(name), command, tty=tty, interactive=interactive,
        env_names=[check.env_name(key) for key in env_names],
        workdir=None if workdir is None else check.guest_path(workdir, "workdir"),
        user=None if user is None else check.user_name(user),
    )  # fmt: skip


def cp_args(
    src: str, name: str, dst: str, *, uid: int | None = None, gid: int | None = None
) -> list[str]:
    """Arguments of `smolvm machine cp SRC NAME:DST` (an upload); `--uid/--gid` need 1.9.0."""
    check.no_nul(src, "host path")
    if ":" in src:
        # smolvm splits SRC at its first ':' and would read a download from machine "a".
        raise InvalidInputError(f"host path {src!r} contains ':'")
    check.machine_name(name)
    check.guest_path(dst)
    args = ["machine", "cp"]
    for flag, value in (("--uid", uid), ("--gid", gid)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(f"{flag} must be a non-negative integer, not {value!r}")
            args += [flag, str(value)]
    return [*args, src, f"{name}:{dst}"]


def cp_out_args(name: str, src: str, dst: str) -> list[str]:
    """Arguments of `smolvm machine cp NAME:SRC DST` (a download of a regular file)."""
    check.machine_name(name)
    check.guest_path(src)
    check.no_nul(dst, "host path")
    # SRC holds the colon, so smolvm takes DST as a host path whatever it contains.
    return ["machine", "cp", f"{name}:{src}", dst]


# --- executable and version --------------------------------------------------------------


_which = ew.which


def find_executable(environ: Mapping[str, str] | None = None) -> str:
    """Locate smolvm: `$BOTTLE_SMOLVM` if set, else the PATH of `environ` (default os.environ).

    Raises:
        SmolvmNotFoundError: nothing found; the message names the PATH searched.
        SmolvmNotExecutableError: the file exists but cannot be executed.
    """
    env = os.environ if environ is None else environ
    override = env.get(ENV_OVERRIDE)
    if override:
        if os.sep not in override:
            found = _which(override, env.get("PATH", os.defpath))
            if found is None:
                raise SmolvmNotFoundError(
                    f"{ENV_OVERRIDE}={override!r}: no such program on PATH "
                    f"({env.get('PATH', os.defpath)}); set {ENV_OVERRIDE} to the full path",
                    filename=override,
                )
            return found
        if not os.path.exists(override):
            raise SmolvmNotFoundError(
                f"{ENV_OVERRIDE}={override!r}: no such file; set {ENV_OVERRIDE} to the "
                "path of the smolvm executable, or unset it to search PATH",
                filename=override,
            )
        if os.path.isdir(override) or not os.access(override, os.X_OK):
            raise SmolvmNotExecutableError(
                f"{ENV_OVERRIDE}={override!r} is not an executable file", filename=override
            )
        return override
    search = env.get("PATH", os.defpath)
    found = _which("smolvm", search)
    if found is not None:
        return found
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", "smolvm")
        if os.path.isfile(candidate):
            raise SmolvmNotExecutableError(
                f"smolvm found at {candidate} but it is not executable; fix its mode or set "
                f"{ENV_OVERRIDE}=/path/to/smolvm",
                filename=candidate,
            )
    raise SmolvmNotFoundError(
        f"smolvm not found on PATH ({search}); install smolvm or set "
        f"{ENV_OVERRIDE}=/path/to/smolvm",
        filename="smolvm",
    )


_VERSION = re.compile(r"\bsmolvm\s+v?(\d+)\.(\d+)\.(\d+)")
# What an installed smolvm answered, by its file identity (`identity`), in this process; the same
# answers are kept across processes in bottle's cache (`bottle._cache`, kind "smolvm").
Identity = ew.Identity
_version_cache: dict[Identity, tuple[int, int, int]] = {}
_exec_user_cache: dict[Identity, bool] = {}
_FACTS = ew.FACTS


identity = ew.identity


def _facts(key: Identity) -> dict[str, Any]:
    return _cache.load(_FACTS, key) or {}


def _remember(key: Identity, **facts: Any) -> None:
    _cache.store(_FACTS, key, {**_facts(key), **facts})


def clear_version_cache() -> None:
    """Forget everything bottle learnt of installed smolvms and their machines, in this process
    and in its cache directory (for tests that swap the release a fake smolvm fakes)."""
    _version_cache.clear()
    _exec_user_cache.clear()
    _cache.clear()


def parse_version(text: str) -> tuple[int, int, int]:
    """Parse `smolvm --version` output (`smolvm X.Y.Z`, maybe with a suffix)."""
    m = _VERSION.search(text)
    if m is None:
        raise SmolvmVersionError(
            f"cannot read the smolvm version from {text.strip()[:200]!r} "
            "(expected 'smolvm X.Y.Z')"
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def read_version(path: str) -> tuple[int, int, int]:
    """Run `PATH --version` once per executable file and remember the answer (across processes:
    see `identity`)."""
    try:
        key = identity(path)
    except OSError as exc:
        raise SmolvmNotFoundError(
            f"smolvm at {path} cannot be used: {exc.strerror}", filename=path
        ) from None
    cached = _version_cache.get(key)
    if cached is not None:
        return cached
    kept = ew.kept_version(_facts(key))
    if kept is not None:
        _version_cache[key] = kept
        return kept
    try:
        ran = run_captured([path, "--version"], timeout=60)
    except PermissionError:
        raise SmolvmNotExecutableError(
            f"smolvm at {path} is not executable", filename=path
        ) from None
    except OSError as exc:
        raise SmolvmNotFoundError(
            f"cannot run smolvm at {path}: {exc.strerror}", filename=path
        ) from None
    if ran is None:
        raise SmolvmVersionError(f"'{path} --version' did not answer within 60 s")
    status, stdout, stderr = ran
    if status != 0:
        raise SmolvmVersionError(
            f"'{path} --version' failed with status {status}: "
            f"{_last_line(stderr) or _last_line(stdout)}"
        )
    version = parse_version(stdout)
    _version_cache[key] = version
    _remember(key, version=list(version))
    return version


def _fmt(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --- failure classification --------------------------------------------------------------

# The Display prefixes of smolvm's Error enum (`#[error(...)]` in src/data/errors.rs, v1.9.3);
# main.rs prints every failure as `Error: <Display>` and exits 1. A guest program may print
# "Error: " lines of its own, so for exec only these shapes count as smolvm's.
_ERROR_PREFIXES = (
    "vm creation failed",
    "vm not found",
    "hypervisor not available",
    "invalid vm state",
    "rootfs operation failed",
    "rootfs not found",
    "storage operation failed",
    "disk not found",
    "mount operation failed",
    "invalid mount path",
    "mount source not found",
    "config operation failed",
    "database operation failed",
    "database not available",
    "agent operation failed",
    "kvm not available",
    "kvm permission denied",
    "io operation failed",
)
_SMOLVM_ERROR = re.compile(
    r"^Error: ((?:" + "|".join(map(re.escape, _ERROR_PREFIXES)) + r"|command '.*' failed): .*)$"
)
_ANY_ERROR = re.compile(r"^Error: (.+)$")
# The client's read failing mid-exec (the VM died): Error::Io's Display.
_LOST = re.compile(r"^io operation failed: connection (closed|reset)|connection to vm lost")


def classify_failure(
    argv: Sequence[str],
    returncode: int,
    stderr: str,
    *,
    machine: str | None = None,
    guest: bool = False,
) -> SmolvmCommandError | None:
    """Map a failed smolvm run to an exception; None means "not smolvm's failure".

    With `guest=True` (exec), exit statuses 1 and 2 are ambiguous: they are taken as smolvm's
    only when stderr shows smolvm's own error shape; otherwise the guest command failed and
    the caller gets its status. Text alone cannot tell a newer smolvm's new words from a guest's
    `Error: ` line: `Smolvm.call` settles those by the machine's state.
    """
    if returncode == 0:
        return None
    lines = [line.rstrip("\r") for line in stderr.splitlines() if line.strip()]
    # clap's usage error names the program; a guest tool's own (uv, ruff, rg: also clap, also
    # exit 2) names itself and stays the guest's result.
    usage = any(line.startswith("Usage: smolvm") for line in lines)
    if returncode == 2 and (usage or not guest):
        first = next((ln for ln in lines if ln.startswith("error:")), _last_line(stderr))
        return SmolvmUsageError(
            f"smolvm rejected its arguments: {first or 'usage error (exit status 2)'}",
            argv=argv,
            returncode=returncode,
            stderr=stderr,
            machine=machine,
        )
    message = None
    if returncode == 1 and lines:
        pattern = _SMOLVM_ERROR if guest else _ANY_ERROR
        m = pattern.match(lines[-1])
        if m is None and not guest:
            m = next((pm for pm in map(pattern.match, reversed(lines)) if pm), None)
        if m is not None:
            message = m.group(1)
    if message is None:
        if guest:
            return None
        message = _last_line(stderr) or f"exit status {returncode}"
    cls: type[SmolvmError] = SmolvmError
    lowered = message.lower()
    if _LOST.search(lowered):
        cls = ConnectionLostError
    elif "already exists" in lowered:
        cls = MachineExistsError
    elif lowered.startswith("vm not found") or re.search(r"machine '[^']*' not found", lowered):
        cls = MachineNotFoundError
    elif "is not running" in lowered:
        cls = MachineNotRunningError
    sub = " ".join(argv[1:3]) if len(argv) >= 3 else "smolvm"
    where = f" (machine {machine!r})" if machine else ""
    return cls(
        f"smolvm {sub} failed{where}: {message}",
        argv=argv,
        returncode=returncode,
        stderr=stderr,
        machine=machine,
    )


def _unsettled(returncode: int, stderr: str, error: SmolvmCommandError | None) -> bool:
    """Whether a failed exec's text leaves open what failed.

    smolvm prints every failure as `Error: <Display>` (src/main.rs), and a newer smolvm words some
    in ways bottle has never seen (1.14 reports a VM killed by a signal with a new text, smolvm PR
    #1154). So a last stderr line of that shape that bottle does not recognise, or that names no
    precise cause, is settled by the machine's state. A guest command's own failure without such a
    line (the common case) costs nothing.
    """
    if returncode == 0 or (error is not None and type(error) is not SmolvmError):
        return False
    return _last_line(stderr).startswith("Error: ")


# --- runner ------------------------------------------------------------------------------

# A large paste into an `-i`/`-t` session can deadlock smolvm before 1.8.1 (see bottle._execwire).
PASTE_SAFE_VERSION = ew.PASTE_SAFE_VERSION
_warned_old: set[str] = set()


def _check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """A time limit in seconds: None or infinity for none, else a number above 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidInputError(
            f"{what} must be a number of seconds or None, not {type(timeout).__name__}"
        )
    try:
        seconds = float(timeout)
    except OverflowError:  # an int beyond any float: as good as no limit
        seconds = math.inf
    if math.isnan(seconds) or seconds <= 0:
        raise InvalidInputError(f"{what} must be above 0 seconds (None: no limit), not {timeout}")
    return None if math.isinf(seconds) else seconds


@dataclass(frozen=True)
class Timeouts:
    """Time limits in seconds for smolvm's lifecycle calls (None or `math.inf`: no limit).

    Each is checked on construction: a number above 0, or None (`InvalidInputError`).

    `create` and `start` may pull the image (a registry pull of an agent image, hundreds of MiB
    to a few GiB) and `start` then waits up to 30 s for the guest agent (AGENT_READY_TIMEOUT,
    src/agent/manager.rs): 15 minutes leaves room for a 2 GiB pull at about 2.5 MiB/s. `stop`
    waits at most about 12 s inside smolvm (AGENT_STOP_TIMEOUT 2 s, WAIT_FOR_STOP_TIMEOUT
    10 s, then SIGKILL) and `delete` stops first, then removes the data directory: one and two
    minutes. `status`/`ls` and the `--help` probe only read smolvm's database and ping the
    agent (3 s): 30 s.
    """

    create: float | None = 900.0
    start: float | None = 900.0
    stop: float | None = 60.0
    delete: float | None = 120.0
    status: float | None = 30.0
    probe: float | None = 30.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            _check_timeout(getattr(self, name), f"Timeouts {name}")


DEFAULT_TIMEOUTS = Timeouts()


class OutputLine(str):
    """A line smolvm printed; `redrawn` when it ended in a bare carriage return, which a
    terminal overwrites with the next line (smolvm's progress bars, src/cli/mod.rs)."""

    redrawn: bool

    def __new__(cls, text: str, *, redrawn: bool = False) -> OutputLine:
        self = super().__new__(cls, text)
        self.redrawn = redrawn
        return self


def _lines(buffer: bytearray, on_line: Callable[[str], None], final: bool = False) -> None:
    # smolvm redraws progress with "\r", so both "\r" and "\n" end a line; "\r\n" is one end.
    while True:
        cut = min((i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0), default=-1)
        if cut < 0:
            break
        end = cut + 1
        redrawn = buffer[cut] == 0x0D
        if redrawn:
            if end == len(buffer) and not final:
                break  # a "\n" may follow in the next read
            if buffer[end : end + 1] == b"\n":
                redrawn, end = False, end + 1
        line = bytes(buffer[:cut]).decode("utf-8", "replace").strip()
        del buffer[:end]
        if line:
            on_line(OutputLine(line, redrawn=redrawn))
    if final and buffer.strip():
        on_line(OutputLine(bytes(buffer).decode("utf-8", "replace").strip()))
        buffer.clear()


# signal.valid_signals() takes about 0.2 ms a call; the set never changes.
_SIGNALS = tuple(signal.valid_signals())
try:
    # CPython's own functions under signal.py's: the same handlers, without the conversion to
    # enums that costs signal.getsignal about 1 us a call (62 signals, on every smolvm call).
    from _signal import (  # type: ignore[import-not-found]
        getsignal as _getsignal,
    )
    from _signal import signal as _setsignal
except ImportError:  # another Python
    _getsignal, _setsignal = signal.getsignal, signal.signal


class _HeldSignals:
    """This process's Python signal handlers, held back while a child starts.

    `subprocess.Popen` forks, then waits for the child's exec: a handler that raises there
    (KeyboardInterrupt, the CLI's SystemExit on SIGTERM/SIGHUP) leaves Popen before it has
    handed back the child, and smolvm, in a session of its own, runs on with nobody to stop or
    wait for it. While held, a signal is only noted; `release` puts the handlers back and runs
    those of the noted signals, at a point where the caller holds the child and will kill it.
    Only the main thread runs Python signal handlers: in any other there is nothing to hold.
    """

    def __init__(self) -> None:
        self._holding = True
        self._noted: list[tuple[int, FrameType | None]] = []
        self._handlers: dict[int, Callable[[int, FrameType | None], Any]] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            for sig in _SIGNALS:
                handler = _getsignal(sig)
                if callable(handler):
                    self._handlers[sig] = handler
                    # Runs the handlers of signals already pending first: one of those may
                    # raise here, before anything has started.
                    _setsignal(sig, self._note)
        except BaseException:
            self._holding = False
            self._put_back()
            raise

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self._holding:
            self._noted.append((signum, frame))
        else:
            # Still installed after release (a signal raised while the handlers were put
            # back): act exactly as the handler that belongs here.
            self._handlers[signum](signum, frame)

    def _put_back(self) -> None:
        for sig, handler in self._handlers.items():
            _setsignal(sig, handler)

    def release(self) -> None:
        """Put the handlers back, then run those of the signals that came meanwhile."""
        # No handler of this process can raise before the next line: every one that could
        # is `_note`, holding.
        if not self._holding:
            return
        self._holding = False
        self._put_back()
        noted, self._noted = self._noted, []
        for i, (signum, frame) in enumerate(noted):
            try:
                self._handlers[signum](signum, frame)
            except BaseException:
                # As Python does when a handler raises: the others run at the next chance.
                for later, _ in noted[i + 1 :]:
                    signal.raise_signal(later)
                raise


def _kill(proc: subprocess.Popen[bytes], *, group: bool) -> None:
    """SIGKILL the child (with its process group, when it leads one) and reap it; a second
    interrupt meanwhile waits until it is done."""
    held = _HeldSignals()
    try:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait()
    finally:
        held.release()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    _kill(proc, group=True)


def run_captured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, str, str] | None:
    """Run `argv` with stdin on /dev/null; return (status, stdout, stderr), None on timeout.

    smolvm runs in a process group of its own so that, when the time is up (or the caller is
    interrupted), it is killed together with anything it started in that group, and nothing
    left holding its pipes can stall the read. Each stderr line goes to `on_line` as it comes,
    an `OutputLine` (a `str`) that says whether smolvm redraws it in place.
    An interrupt (a signal whose handler raises) at any point, even while the child is still
    starting, kills and reaps it before the exception goes on. `timeout`: None or infinity is
    no limit.
    """
    timeout = _check_timeout(timeout)
    held = _HeldSignals()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except BaseException:
        held.release()
        raise
    out, err, pending = bytearray(), bytearray(), bytearray()
    try:
        # Now that the child is ours, a signal that came while it started takes effect.
        held.release()
        deadline = None if timeout is None else time.monotonic() + timeout
        assert proc.stdout is not None and proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    _kill_group(proc)
                    return None
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if key.data is err and on_line is not None:
                        pending.extend(chunk)
                        _lines(pending, on_line)
        if on_line is not None:
            _lines(pending, on_line, final=True)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            status = proc.wait(left)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    decode = functools.partial(bytes.decode, encoding="utf-8", errors="replace")
    return status, decode(bytes(out)), decode(bytes(err))


def run_attached(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """Run `argv` on this process's stdin, stdout and stderr; return its status.

    Like `subprocess.run`, the child is killed and reaped when the caller is interrupted,
    and, unlike it, also when the interrupt comes while the child is still starting.
    """
    held = _HeldSignals()
    try:
        proc = subprocess.Popen(list(argv), env=None if env is None else dict(env))
    except BaseException:
        held.release()
        raise
    try:
        held.release()
        return proc.wait()
    except BaseException:
        _kill(proc, group=False)
        raise


_STDERR_GRACE = ew.STDERR_GRACE
_write_all_quietly = ew.write_all_quietly

# The wrapper's lines (bottle._execwire.WRAP), by their words.
MARK_RUN = ew.MARK_RUN
MARK_REFUSED = ew.MARK_REFUSED
mark_prefix = ew.mark_prefix


class Marks(ew.MarkFilter):
    """The wrapper's lines, taken out of a guest command's stderr (`run_streamed`'s `marks`):
    `bottle._execwire.MarkFilter`, whose settling is also an event that a thread can wait for
    (`settled`)."""

    def __init__(self, nonce: str) -> None:
        super().__init__(nonce)
        self.settled = threading.Event()

    def is_settled(self) -> bool:
        return self.settled.is_set()

    def _settle(self) -> None:
        super()._settle()
        self.settled.set()


def _forward_input(pipe: IO[bytes], marks: Marks, stop: int) -> None:
    """Copy this process's stdin to `pipe` once the wrapper has handed over to the command,
    its end included; stop (closing `pipe`) when `stop` becomes readable. A refusal, or a
    command killed before it started, takes nothing from stdin."""
    try:
        marks.settled.wait()
        if not marks.started:
            return
        with selectors.DefaultSelector() as sel:
            try:
                sel.register(0, selectors.EVENT_READ)
                sel.register(stop, selectors.EVENT_READ)
                waits = True
            except PermissionError:
                # epoll takes no regular file (nor /dev/null): a read of one never waits, and
                # its copy ends at its end or when the command has gone.
                waits = False
            while True:
                if waits and any(key.fd == stop for key, _ in sel.select()):
                    return
                try:
                    chunk = os.read(0, 65536)
                except BlockingIOError:  # a non-blocking stdin, shared: not ours to change
                    continue
                if not chunk:
                    return  # its end: closing the pipe hands it on
                if not _write_all_quietly(pipe.fileno(), chunk):
                    return  # the command (or smolvm) is gone
    except (OSError, ValueError):
        pass  # stdin closed or unreadable: the command reads its end
    finally:
        _close_quietly(pipe)


class _StderrCopy:
    """A child's stderr, copied to this process's as it comes (in a thread of its own), but
    for a last line that starts like smolvm's `Error: `: whether that line is smolvm's is known
    only at the end, so it is held until more output comes or the child has exited. With
    `capture`, nothing is copied: all of it is kept for the caller. With `marks`, the guest
    wrapper's lines are taken out first."""

    def __init__(self, pipe: IO[bytes], *, capture: bool, marks: Marks | None = None) -> None:
        self._pipe = pipe
        self._capture = capture
        self._marks = marks
        self.kept = bytearray()
        self._thread = threading.Thread(target=self._copy, name="bottle-stderr", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        hold = ew.StderrHold(self._marks)
        shown = True
        marks = self._marks
        try:
            while chunk := os.read(self._pipe.fileno(), 65536):
                if self._capture:
                    if marks is not None:
                        chunk = marks.filter(chunk)
                    self.kept += chunk
                    continue
                data = hold.feed(chunk)
                if shown and data:
                    # A stderr that takes no more (closed) must not stop the child: drain on.
                    shown = _write_all_quietly(2, data)
        except OSError:
            pass
        finally:
            self.kept += hold.end()
            # Closed here, by the one thread that reads it: closed from another, its number
            # could be reused while a read still waits on it.
            _close_quietly(self._pipe)

    def finish(self) -> bytes:
        """What was kept, once the child's stderr has ended (or, if something the child left
        behind holds it open, after a grace: the copy then goes on by itself)."""
        self._thread.join(_STDERR_GRACE)
        return bytes(self.kept)


def _close_quietly(pipe: IO[bytes] | None) -> None:
    if pipe is not None:
        with contextlib.suppress(OSError):
            pipe.close()


def run_streamed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    feed: Callable[[IO[bytes]], None] | None = None,
    drain: Callable[[IO[bytes]], None] | None = None,
    capture_stderr: bool = False,
    marks: Marks | None = None,
    judge: Callable[[int, str], bool] | None = None,
) -> tuple[int, str]:
    """Run `argv` (a smolvm exec), its output passing through untouched; return (status, text).

    `stdin` and `stdout`: None gives the child this process's own (what the guest writes
    reaches it byte for byte, as it comes; what the user types or pipes reaches the guest),
    `subprocess.DEVNULL` none, `subprocess.PIPE` a pipe that `feed(pipe)` fills (the pipe is
    then closed: the guest reads its end) or `drain(pipe)` empties. stderr is copied to this
    process's as it comes, all but a last line in smolvm's own error shape (`Error: vm not
    found: …`) when the status is 1: that line is smolvm's failure, not the guest's output,
    and is returned instead, for the caller to report (`classify_failure`). Any other failing
    last line that starts `Error: ` goes to `judge(status, line)`, which says whether it is
    smolvm's after all (a newer smolvm's words look just like a guest's line: see
    `Smolvm.settle_exec_failure`): returned if so, shown if not. Otherwise the text is empty.
    With `capture_stderr` stderr is not shown: all of it is the returned text.

    With `marks` the guest command is bottle's wrapper around the real one: its lines are taken
    out of stderr (`marks` says what they were), and `stdin=None` forwards this process's stdin
    through a pipe only once the wrapper has handed over to the command, so that a refusal or
    a kill before the command started has taken none of it.

    An interrupt at any point, even while the child is still starting, kills and reaps it
    before the exception goes on. The status is the child's (negative: killed by a signal).
    """
    forward = marks is not None and stdin is None
    held = _HeldSignals()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if forward else stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
        )
    except BaseException:
        held.release()
        raise
    assert proc.stderr is not None
    copy = _StderrCopy(proc.stderr, capture=capture_stderr, marks=marks)
    forwarder = None
    try:
        if forward:
            assert marks is not None and proc.stdin is not None
            stop_r, stop_w = os.pipe()
            forwarder = threading.Thread(
                target=_forward_input, args=(proc.stdin, marks, stop_r), name="bottle-stdin",
                daemon=True,
            )  # fmt: skip
            forwarder.start()
        held.release()
        if feed is not None and proc.stdin is not None:
            try:
                feed(proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the guest stopped reading: its status says why
        if drain is not None and proc.stdout is not None:
            drain(proc.stdout)
        status = proc.wait()
    except BaseException:
        _kill(proc, group=False)
        raise
    finally:
        if forwarder is None:
            _close_quietly(proc.stdin)
        _close_quietly(proc.stdout)
        kept = copy.finish()
        if forwarder is not None:
            _stop_forwarding(forwarder, marks, stop_r, stop_w)
    if capture_stderr:
        return status, kept.decode("utf-8", "replace")
    return finish_streamed(status, kept, judge)


def finish_streamed(
    status: int, kept: bytes, judge: Callable[[int, str], bool] | None = None
) -> tuple[int, str]:
    """The end of a streamed exec (`run_streamed`, or `bottle._quickexec`'s own run): `kept`,
    the stderr held back, is smolvm's failure (returned, for the caller to report) or the
    guest's (shown, and the text is empty); see `run_streamed`."""
    if ew.may_be_smolvms(status, kept):
        line = kept.decode("utf-8", "replace").rstrip("\r\n")
        if status == 1 and _SMOLVM_ERROR.match(line):
            return status, line
        if judge is not None and judge(status, line):
            return status, line
    _write_all_quietly(2, kept)
    return status, ""


def _stop_forwarding(
    forwarder: threading.Thread, marks: Marks | None, stop_r: int, stop_w: int
) -> None:
    """The child is gone: stop copying stdin to it (the forwarder owns, and closes, its pipe)."""
    assert marks is not None
    marks.settled.set()  # a forwarder still waiting to hear from the wrapper never will
    os.write(stop_w, b"x")
    forwarder.join(_STDERR_GRACE)
    os.close(stop_w)
    if not forwarder.is_alive():  # else it may still select on it
        os.close(stop_r)


class Smolvm:
    """Runs smolvm subcommands; finds the executable and checks its version on first use."""

    # Whether what its guests answer may be kept for later processes (`bottle._cache`): not for
    # a stand-in that only assumes the answers (the dry run's).
    keeps_guest_answers = True

    def __init__(
        self,
        executable: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        if executable is not None:
            check.no_nul(executable, "executable")
        if environ is not None and not isinstance(environ, Mapping):
            raise InvalidInputError(f"environ must be a mapping, not {type(environ).__name__}")
        if not isinstance(timeouts, Timeouts):
            raise InvalidInputError(
                f"timeouts must be a bottle.smolvm.Timeouts, not {type(timeouts).__name__}"
            )
        self._executable = executable
        self._environ = environ
        self._path: str | None = None
        self._version: tuple[int, int, int] | None = None
        self._identity: Identity | None = None
        self._exec_user_option: bool | None = None
        self.timeouts = timeouts

    def __repr__(self) -> str:
        return f"Smolvm(executable={self._path or self._executable!r})"

    @property
    def path(self) -> str:
        """The resolved executable, after the version check."""
        if self._path is None:
            if self._executable is not None:
                base = os.environ if self._environ is None else self._environ
                path = find_executable({**base, ENV_OVERRIDE: self._executable})
            else:
                path = find_executable(self._environ)
            version = read_version(path)
            if version < MIN_VERSION:
                raise SmolvmTooOldError(
                    f"smolvm {_fmt(version)} at {path} is too old: bottle needs smolvm "
                    f"{_fmt(MIN_VERSION)} or later",
                    found=version,
                    minimum=MIN_VERSION,
                )
            if version < PASTE_SAFE_VERSION and path not in _warned_old:
                _warned_old.add(path)
                log.warning(
                    "smolvm %s at %s is older than %s: a large paste into an interactive "
                    "session can hang it (fixed in smolvm %s); consider upgrading",
                    _fmt(version),
                    path,
                    _fmt(PASTE_SAFE_VERSION),
                    _fmt(PASTE_SAFE_VERSION),
                )
            self._path, self._version = path, version
        return self._path

    @property
    def identity(self) -> Identity:
        """The file identity of the smolvm in use (`bottle.smolvm.identity`), taken once."""
        if self._identity is None:
            path = self.path
            try:
                self._identity = identity(path)
            except OSError as exc:
                raise SmolvmNotFoundError(
                    f"smolvm at {path} cannot be used: {exc.strerror}", filename=path
                ) from None
        return self._identity

    @property
    def version(self) -> tuple[int, int, int]:
        """The installed smolvm version (read once)."""
        self.path  # noqa: B018 - resolves and checks
        assert self._version is not None
        return self._version

    @property
    def version_text(self) -> str:
        """The installed version as `X.Y.Z`."""
        return _fmt(self.version)

    def has_exec_user_option(self) -> bool:
        """Whether `smolvm machine exec --help` offers `--user` (none up to 1.9.3 does; 1.14.0
        and later do, by smolvm's pull request #1148)."""
        if self._exec_user_option is None:
            key = self.identity
            if key not in _exec_user_cache:
                kept = _facts(key).get("exec_user_option")
                if isinstance(kept, bool):
                    _exec_user_cache[key] = kept
            if key not in _exec_user_cache:
                ran = run_captured(
                    [self.path, "machine", "exec", "--help"], timeout=self.timeouts.probe
                )
                text = ran[1] if ran is not None and ran[0] == 0 else ""
                found = re.search(r"^\s*(-u, )?--user\b", text, re.M) is not None
                _exec_user_cache[key] = found
                if ran is not None and ran[0] == 0:  # a failed probe is asked again next time
                    _remember(key, exec_user_option=found)
            self._exec_user_option = _exec_user_cache[key]
        return self._exec_user_option

    def call(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        machine: str | None = None,
        guest: bool = False,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[subprocess.CompletedProcess[str], SmolvmCommandError | None]:
        """Run `smolvm ARGS`, capture text output; return it with smolvm's failure, if any.

        Only a smolvm that cannot be run at all is raised (`SmolvmNotFoundError`,
        `SmolvmNotExecutableError`); every other failure comes back as the second item, a
        step that outlives `timeout` seconds as `SmolvmTimeoutError` (smolvm killed). With
        `guest=True` a non-zero status that is not smolvm's is the guest's: no error.
        """
        argv = [self.path, *args]
        log.debug("running %s", argv)
        try:
            ran = run_captured(argv, env=env, timeout=timeout, on_line=on_line)
        except PermissionError:
            raise SmolvmNotExecutableError(
                f"smolvm at {argv[0]} is not executable", filename=argv[0]
            ) from None
        except FileNotFoundError:
            raise SmolvmNotFoundError(
                f"smolvm at {argv[0]} disappeared; set {ENV_OVERRIDE}=/path/to/smolvm",
                filename=argv[0],
            ) from None
        if ran is None:
            sub = " ".join(args[:2])
            where = f" for machine {machine!r}" if machine else ""
            proc = subprocess.CompletedProcess(argv, -signal.SIGKILL, "", "")
            return proc, SmolvmTimeoutError(
                f"smolvm {sub}{where} did not finish within {timeout:g} s and was stopped",
                argv=argv,
                machine=machine,
            )
        status, out, err = ran
        proc = subprocess.CompletedProcess(argv, status, out, err)
        error = classify_failure(argv, status, err, machine=machine, guest=guest)
        if guest and machine is not None:
            error = self.settle_exec_failure(argv, status, err, machine=machine, error=error)
        return proc, error

    def settle_exec_failure(
        self,
        argv: Sequence[str],
        returncode: int,
        stderr: str,
        *,
        machine: str,
        error: SmolvmCommandError | None,
    ) -> SmolvmCommandError | None:
        """`error` (what `classify_failure(..., guest=True)` read in `stderr`), settled by the
        machine's state when the text leaves open what failed: a last line in smolvm's `Error: `
        shape that names no cause bottle knows. Then gone is `MachineNotFoundError`, never started
        (`created`) `MachineNotRunningError`, any other state but running `ConnectionLostError`;
        still running leaves it as it was (a guest's own status, or smolvm's error as read).
        Anything else costs nothing: `error` comes back as it was."""
        if not _unsettled(returncode, stderr, error):
            return error
        try:
            state = self.state(machine)
        except BottleError as exc:  # best effort: what the text said stands
            log.debug("machine %r: state probe after a failed exec failed: %s", machine, exc)
            return error
        if state == "running":
            return error
        said = _last_line(stderr).removeprefix("Error: ")
        sub = " ".join(argv[1:3])
        if state is None:
            return MachineNotFoundError(
                f"smolvm {sub} failed (machine {machine!r}): {said}; machine {machine!r} does "
                "not exist",
                argv=argv,
                returncode=returncode,
                stderr=stderr,
                machine=machine,
            )
        if state == "created":
            return MachineNotRunningError(
                f"smolvm {sub} failed (machine {machine!r}): {said}; machine {machine!r} has "
                "never been started",
                argv=argv,
                returncode=returncode,
                stderr=stderr,
                machine=machine,
            )
        return ConnectionLostError(
            f"connection to the VM lost: machine {machine!r} is {state} after smolvm {sub} "
            f"failed: {said}",
            argv=argv,
            returncode=returncode,
            stderr=stderr,
            machine=machine,
        )

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        machine: str | None = None,
        guest: bool = False,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `smolvm ARGS`, capture text output, raise on smolvm's own failures.

        With `guest=True` a non-zero status that is not smolvm's is returned, not raised.
        """
        proc, error = self.call(
            args, env=env, machine=machine, guest=guest, timeout=timeout, on_line=on_line
        )
        if error is not None:
            raise error
        return proc

    def create(
        self,
        name: str,
        *,
        image: str | None = None,
        cpus: int | None = None,
        memory_mib: int | None = None,
        network: bool = False,
        allow_hosts: Sequence[str] = (),
        allow_cidrs: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """Create a machine (raises `MachineExistsError` if the name is taken)."""
        args = create_args(
            name,
            image=image,
            cpus=cpus,
            memory_mib=memory_mib,
            network=network,
            allow_hosts=allow_hosts,
            allow_cidrs=allow_cidrs,
            labels=labels,
        )
        self.run(
            args,
            machine=name,
            timeout=self.timeouts.create,
            on_line=on_line,
        )

    def start(self, name: str, *, on_line: Callable[[str], None] | None = None) -> None:
        """Start a machine; returns once its guest agent answers."""
        self.run(start_args(name), machine=name, timeout=self.timeouts.start, on_line=on_line)

    def stop(self, name: str) -> None:
        """Stop a machine (a machine that is not running is not an error)."""
        self.run(stop_args(name), machine=name, timeout=self.timeouts.stop)

    def delete(self, name: str) -> None:
        """Delete a machine, stopping it first if needed."""
        self.run(delete_args(name), machine=name, timeout=self.timeouts.delete)

    def status(self, name: str) -> dict[str, Any]:
        """The machine's JSON status (raises `MachineNotFoundError` if unknown)."""
        proc = self.run(status_args(name), machine=name, timeout=self.timeouts.status)
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise SmolvmError(
                f"smolvm machine status: unreadable JSON for machine {name!r}",
                argv=status_args(name),
                returncode=proc.returncode,
                stderr=proc.stderr,
                machine=name,
            ) from None
        if not isinstance(data, dict):
            raise SmolvmError(
                f"smolvm machine status: expected a JSON object for machine {name!r}",
                machine=name,
            )
        return data

    def state(self, name: str) -> str | None:
        """The machine's state (`running`, `stopped`, …), or None when it does not exist."""
        try:
            return str(self.status(name).get("state", "unknown"))
        except MachineNotFoundError:
            return None

    def ls(self) -> list[dict[str, Any]]:
        """All machines as `ls --json` reports them."""
        proc = self.run(ls_args(), timeout=self.timeouts.status)
        text = proc.stdout.strip()
        if not text or text == "No machines found":
            return []
        try:
            data = json.loads(text)
        except ValueError:
            raise SmolvmError("smolvm machine ls: unreadable JSON output") from None
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    def exec(
        self,
        name: str,
        command: Sequence[str],
        *,
        env_names: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a guest command without a tty and capture its output."""
        args = exec_args(name, command, env_names=env_names)
        return self.run(args, env=env, machine=name, guest=True)

    def cp_in(
        self, src: str, name: str, dst: str, *, uid: int | None = None, gid: int | None = None
    ) -> None:
        """Upload a host file into the machine (`uid`/`gid`: smolvm 1.9.0 or later)."""
        self.run(cp_args(src, name, dst, uid=uid, gid=gid), machine=name)
