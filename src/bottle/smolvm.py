"""The smolvm command line: argv builders, executable lookup, version check, error mapping.

Facts come from shared/smolvm-cli.md (smolvm 1.0.2 and later): `exec --name` is long-only and
its options must come before `--`; every other subcommand takes `-n NAME`; `delete` prompts
unless given `-f`; `status` and `ls` have `--json`; `cp SRC NAME:DST` uploads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from bottle import _validate as check
from bottle.errors import (
    ConnectionLostError,
    InvalidInputError,
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    SmolvmCommandError,
    SmolvmError,
    SmolvmNotExecutableError,
    SmolvmNotFoundError,
    SmolvmTooOldError,
    SmolvmUsageError,
    SmolvmVersionError,
)

__all__ = [
    "ENV_OVERRIDE",
    "MIN_VERSION",
    "Smolvm",
    "classify_failure",
    "clear_version_cache",
    "cp_args",
    "create_args",
    "delete_args",
    "exec_args",
    "find_executable",
    "ls_args",
    "parse_version",
    "read_version",
    "start_args",
    "status_args",
    "stop_args",
]

log = logging.getLogger(__name__)

ENV_OVERRIDE = "BOTTLE_SMOLVM"
# 1.0.2 made machine names flags everywhere (`create -n`, `delete -n`); older CLIs need
# positional names, which this module does not speak.
MIN_VERSION = (1, 0, 2)


# --- argv builders (everything after the executable) -------------------------------------


def create_args(
    name: str,
    *,
    image: str | None = None,
    cpus: int | None = None,
    memory_mib: int | None = None,
    network: bool = False,
) -> list[str]:
    """Arguments of `smolvm machine create`."""
    check.machine_name(name)
    args = ["machine", "create", "-n", name]
    if image is not None:
        check.no_nul(image, "image")
        if not image or image.startswith("-"):
            raise InvalidInputError(f"invalid image reference {image!r}")
        args += ["-I", image]
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
            raise InvalidInputError(f"cpus must be a positive integer, not {cpus!r}")
        args += ["--cpus", str(cpus)]
    if memory_mib is not None:
        if isinstance(memory_mib, bool) or not isinstance(memory_mib, int) or memory_mib < 1:
            raise InvalidInputError(
                f"memory (MiB) must be a positive integer, not {memory_mib!r}"
            )
        args += ["--mem", str(memory_mib)]
    if network:
        args.append("--net")
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
    env_names: Sequence[str] = (),
) -> list[str]:
    """Arguments of `smolvm machine exec`.

    `env_names` become bare `-e KEY` options: smolvm copies each value from its own
    environment, so values never appear on a command line.
    """
    check.machine_name(name)
    command = check.argv(command, "guest command argument")
    if not command:
        raise InvalidInputError("the guest command is empty")
    args = ["machine", "exec", "--name", name]
    if tty:
        args += ["-i", "-t"]
    for key in env_names:
        args += ["-e", check.env_name(key)]
    return [*args, "--", *command]


def cp_args(src: str, name: str, dst: str) -> list[str]:
    """Arguments of `smolvm machine cp SRC NAME:DST` (an upload)."""
    check.no_nul(src, "host path")
    if ":" in src:
        # smolvm splits SRC at its first ':' and would read a download from machine "a".
        raise InvalidInputError(f"host path {src!r} contains ':'")
    check.machine_name(name)
    check.guest_path(dst)
    return ["machine", "cp", src, f"{name}:{dst}"]


# --- executable and version --------------------------------------------------------------


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
            found = shutil.which(override, path=env.get("PATH", os.defpath))
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
    found = shutil.which("smolvm", path=search)
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
_version_cache: dict[tuple[str, int, int, int], tuple[int, int, int]] = {}


def clear_version_cache() -> None:
    """Forget every cached `smolvm --version` answer (for tests that swap versions)."""
    _version_cache.clear()


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
    """Run `PATH --version` once per executable file and cache the result."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SmolvmNotFoundError(
            f"smolvm at {path} cannot be used: {exc.strerror}", filename=path
        ) from None
    key = (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _version_cache.get(key)
    if cached is not None:
        return cached
    try:
        proc = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=60,
            check=False,
        )
    except PermissionError:
        raise SmolvmNotExecutableError(
            f"smolvm at {path} is not executable", filename=path
        ) from None
    except OSError as exc:
        raise SmolvmNotFoundError(
            f"cannot run smolvm at {path}: {exc.strerror}", filename=path
        ) from None
    except subprocess.TimeoutExpired:
        raise SmolvmVersionError(f"'{path} --version' did not answer within 60 s") from None
    if proc.returncode != 0:
        raise SmolvmVersionError(
            f"'{path} --version' failed with status {proc.returncode}: "
            f"{_last_line(proc.stderr) or _last_line(proc.stdout)}"
        )
    version = parse_version(proc.stdout)
    _version_cache[key] = version
    return version


def _fmt(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --- failure classification --------------------------------------------------------------

# smolvm's error texts (src/data/errors.rs): "vm not found: N", "agent operation failed: …",
# "config operation failed: …". A guest program may print "Error: " lines of its own, so for
# exec only these shapes count as smolvm's.
_SMOLVM_ERROR = re.compile(
    r"^Error: ((?:vm not found|agent operation failed|config operation failed)\b.*)$"
)
_ANY_ERROR = re.compile(r"^Error: (.+)$")


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
    the caller gets its status.
    """
    if returncode == 0:
        return None
    lines = [line.rstrip("\r") for line in stderr.splitlines() if line.strip()]
    usage = any(line.startswith("Usage:") for line in lines) and any(
        line.startswith("error:") for line in lines
    )
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
    if "connection to vm lost" in lowered:
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


# --- runner ------------------------------------------------------------------------------


class Smolvm:
    """Runs smolvm subcommands; finds the executable and checks its version on first use."""

    def __init__(
        self, executable: str | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self._executable = executable
        self._environ = environ
        self._path: str | None = None
        self._version: tuple[int, int, int] | None = None

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
            self._path, self._version = path, version
        return self._path

    @property
    def version(self) -> tuple[int, int, int]:
        """The installed smolvm version (read once)."""
        self.path  # noqa: B018 - resolves and checks
        assert self._version is not None
        return self._version

    def call(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        machine: str | None = None,
        guest: bool = False,
    ) -> tuple[subprocess.CompletedProcess[str], SmolvmCommandError | None]:
        """Run `smolvm ARGS`, capture text output; return it with smolvm's failure, if any.

        Only a smolvm that cannot be run at all is raised (`SmolvmNotFoundError`,
        `SmolvmNotExecutableError`); every other failure comes back as the second item.
        With `guest=True` a non-zero status that is not smolvm's is the guest's: no error.
        """
        argv = [self.path, *args]
        log.debug("running %s", argv)
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                env=None if env is None else dict(env),
                check=False,
            )
        except PermissionError:
            raise SmolvmNotExecutableError(
                f"smolvm at {argv[0]} is not executable", filename=argv[0]
            ) from None
        except FileNotFoundError:
            raise SmolvmNotFoundError(
                f"smolvm at {argv[0]} disappeared; set {ENV_OVERRIDE}=/path/to/smolvm",
                filename=argv[0],
            ) from None
        error = classify_failure(argv, proc.returncode, proc.stderr, machine=machine, guest=guest)
        return proc, error

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        machine: str | None = None,
        guest: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `smolvm ARGS`, capture text output, raise on smolvm's own failures.

        With `guest=True` a non-zero status that is not smolvm's is returned, not raised.
        """
        proc, error = self.call(args, env=env, machine=machine, guest=guest)
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
    ) -> None:
        """Create a machine (raises `MachineExistsError` if the name is taken)."""
        self.run(
            create_args(name, image=image, cpus=cpus, memory_mib=memory_mib, network=network),
            machine=name,
        )

    def start(self, name: str) -> None:
        """Start a machine; returns once its guest agent answers."""
        self.run(start_args(name), machine=name)

    def stop(self, name: str) -> None:
        """Stop a machine (a machine that is not running is not an error)."""
        self.run(stop_args(name), machine=name)

    def delete(self, name: str) -> None:
        """Delete a machine, stopping it first if needed."""
        self.run(delete_args(name), machine=name)

    def status(self, name: str) -> dict[str, Any]:
        """The machine's JSON status (raises `MachineNotFoundError` if unknown)."""
        proc = self.run(status_args(name), machine=name)
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
        proc = self.run(ls_args())
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

    def cp_in(self, src: str, name: str, dst: str) -> None:
        """Upload a host file into the machine."""
        self.run(cp_args(src, name, dst), machine=name)
