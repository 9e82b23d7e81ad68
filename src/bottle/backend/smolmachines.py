"""The smolmachines backend: bottles that are smolvm machines.

Who a guest command runs as is smolvm's choice, not ours (its `machine exec` in
src/cli/machine.rs, and the image user applied since commits 5bbffccf and 957bd755): root on a
bare VM; the image's USER on an image machine (for `-i`/`-t` since smolvm 1.3.0, for captured
exec since 1.6.0); up to 1.13.x nothing can pick another, and 1.14.0 added `exec --user` (known
from smolvm's pull request #1148, not from its source). So a bottle uses smolvm's `--user` where
`exec --help` shows it; otherwise it learns once who its guest commands run as (`id`, run in the
guest), runs directly when that is the wanted user, switches with `runuser -u USER --` only from
root (never `-l`: a login PAM session can hang on a minimal guest), and otherwise refuses with a
`GuestUserError`. `HOME`/`USER` and the bottle's env are set with `env K=V…`; the working
directory is smolvm's `-w` (no shell, no login profile).

Secrets (`secret_env`) never appear on a command line: the host `smolvm` process gets them in
its environment and is told their *names* only (`exec -e KEY`, which smolvm fills from its own
environment). In the guest they are in the environment of the process smolvm starts, and
`runuser` (without `-l`) and `env` pass inherited variables through, so neither needs them on
its argv either.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple, overload

from bottle import __version__, _cache, _log
from bottle import _execwire as ew
from bottle import _validate as check
from bottle import smolvm as sv
from bottle.agent_provider import PromptMode, agent_args, get_provider
from bottle.backend import Bottle, BottleBackend, LaunchSpec, MachineInfo, terminal
from bottle.errors import (
    AgentInstallError,
    AgentNotFoundError,
    BottleError,
    ConnectionLostError,
    GuestUserError,
    InvalidInputError,
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    MachineRunningError,
    Message,
    Param,
    SmolvmCommandError,
    SmolvmError,
    SmolvmNotExecutableError,
    SmolvmNotFoundError,
    TeardownInterrupted,
)
from bottle.network import NetworkMode, NetworkPolicy, plan
from bottle.results import AgentResult, ExecResult, Progress, exit_status

if TYPE_CHECKING:
    import tarfile

    from bottle.relay import Recording
    from bottle.sessions import Session

__all__ = [
    "BRING_UP_RETRY",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "PlannedCall",
    "RetryPolicy",
    "SmolmachinesBottle",
    "SmolmachinesBottleBackend",
    "home_for",
]

log = _log.get_logger(__name__)

# Marks a log record whose failure is also handed back in a result (a status, not an
# exception): callers that only look at statuses still see why, and the bottle CLI, which
# raises the precise error from the result and prints it, drops these records.
RETURNED_ERROR = {"returned_error": True}
# Mark the log records of a lifecycle step, and of a line smolvm printed during one: what a
# `progress` callback is told too, so a front end that shows progress can leave them out of the
# log.
PROGRESS_STEP = {"bottle_progress": "step"}
PROGRESS_LINE = {"bottle_progress": "line"}
# States in which a machine's VM process may be up (src/config.rs RecordState): removing one
# stops it first.
UP_STATES = frozenset({"running", "unreachable", "frozen"})
# The labels a launch puts on its machine (smolvm 1.8.0 and later keep them; `ls --json` gives
# them back): bottle's version marks the machine as bottle's own, the others its network.
LABEL_VERSION = "bottle.version"
LABEL_NETWORK = "bottle.network"
LABEL_ALLOW_HOSTS = "bottle.allow-hosts"
LABEL_ALLOW_CIDRS = "bottle.allow-cidrs"
# runuser resets these for the target user and bottle sets HOME/USER explicitly, so a guest_env
# or secret_env entry of one of these names would silently be replaced.
_GUEST_RESERVED = frozenset({"HOME", "USER", "LOGNAME", "SHELL"})
# A secret is put in the environment of the host smolvm process (and of the relay, a Python
# process) before smolvm hands it to the guest, so these would change how those host processes
# run: where programs are found, what the loader injects, where smolvm keeps its state.
_HOST_RESERVED = frozenset(
    {"PATH", "GLIBC_TUNABLES", "TMPDIR", "IFS", "BOTTLE_SMOLVM", "BOTTLE_NO_EXTENSIONS",
     "BOTTLE_REQUIRE_EXTENSION"}
)  # fmt: skip
_HOST_RESERVED_PREFIXES = ("LD_", "DYLD_", "PYTHON", "SMOLVM_", "RUST_", "XDG_", "MALLOC_")
# `machine cp --uid/--gid` (src/cli/machine.rs, CpCmd) since smolvm 1.9.0.
_CP_OWNER_SINCE = (1, 9, 0)
_ID = re.compile(r"uid=(\d+)(?:\(([^)]*)\))?\s+gid=(\d+)")
# Who a machine runs guest commands as, kept across processes (bottle._cache) as its `id` token.
_GUEST = ew.GUEST
# Runs the command only when the guest still runs commands as the kept answer says ($1, the
# start of `id`'s output); else says so on stderr with this call's nonce ($2) and exits 125,
# having run nothing. A kept answer is only a hint: a machine deleted and made again under the
# same name (another image, another USER) must not get a command meant for the old one, run
# directly where it now needs runuser, or the other way round.
_GUARD = (
    'case "$(id)" in "$1 "*) shift 2; exec "$@";; esac; '
    'printf "bottle-guard %s: %s\\n" "$2" "$(id)" >&2; exit 125'
)


# The status of a command the wrapper (bottle._execwire.WRAP) refused to run.
_REFUSED = ew.REFUSED


class _Kept(NamedTuple):
    kind: bool  # interactive (only where smolvm 1.3.0 to 1.5.x makes the kinds differ)
    user: str
    ident: str  # `uid=N(name)`, as `id` starts its output


def _guarded(ident: str, nonce: str, prefix: list[str], command: list[str]) -> list[str]:
    return ["/bin/sh", "-c", _GUARD, "bottle-guard", ident, nonce, *prefix, *command]


def _wrapped(nonce: str, found: _Kept | None, command: list[str]) -> list[str]:
    return ew.wrapped(nonce, found.ident if found is not None else "", command)


def _guard_stopped(result: ExecResult, nonce: str) -> bool:
    """Whether the guard refused to run the command (its line is the last on stderr)."""
    if result.error is not None or result.returncode != 125:
        return False
    lines = result.stderr.splitlines()
    return bool(lines) and lines[-1].startswith(f"bottle-guard {nonce}: ")


def _vm_process_age(pid: int, smolvm: str) -> float | None:
    """Seconds since process `pid` started, when it is that smolvm's own (its VM process runs
    the smolvm executable, src/agent/manager.rs, unless SMOLVM_BOOT_BINARY names another);
    None where that cannot be told (no /proc, not ours, not smolvm)."""
    proc = f"/proc/{pid}"
    try:
        exe = os.path.realpath(os.readlink(f"{proc}/exe"))
        with open(f"{proc}/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    boot = os.environ.get("SMOLVM_BOOT_BINARY")
    known = {os.path.realpath(smolvm)} | ({os.path.realpath(boot)} if boot else set())
    if exe not in known:
        return None
    return max(0.0, now - ticks / hz)


def _check_names(env: Mapping[str, str], what: Param, *, host: bool) -> None:
    for key in env:
        reason = None
        if key in _GUEST_RESERVED:
            reason = "runuser and bottle set it in the guest"
        elif host and (key in _HOST_RESERVED or key.startswith(_HOST_RESERVED_PREFIXES)):
            reason = (
                "a secret is also in the environment of the host smolvm process, where this "
                "name would change how it runs (pass it in {guest_env} if it is not secret)"
            )
        if reason:
            raise InvalidInputError(
                Message(
                    "{what} name {key!r} is reserved: " + reason,
                    what=what,
                    key=key,
                    guest_env=Param("guest_env"),
                )
            )


home_for = ew.home_for


@dataclass(frozen=True)
class RetryPolicy:
    """When to run a captured guest command again.

    `attempts` counts every run (2 = one retry); `statuses` are the exit statuses that trigger
    a retry after `delay` seconds. The default retries once on 137, whatever happened before:
    the hypervisor can SIGKILL a short exec while the VM is still coming up, and that is what
    the replaced class did.

    `bring_up` limits retries to that bring-up: a run is repeated only when it printed nothing
    (a command that printed ran, and running it again would repeat what it did) and the machine
    had been up at most `bring_up` seconds. The machine's age is timed from `launch`'s start of
    it when this bottle came from a launch, else from the start of its VM process (`machine
    status --json`'s `pid`, verified to be smolvm's, on Linux), else from its creation
    (`created_at`, never less than its uptime); the status is asked only after such a kill. An
    age that cannot be told is past the bring-up. `BRING_UP_RETRY` is what the command line
    uses.
    """

    attempts: int = 2
    delay: float = 1.0
    statuses: frozenset[int] = frozenset({137})
    bring_up: float | None = None

    def __post_init__(self) -> None:
        check.count(self.attempts, "RetryPolicy attempts", minimum=1)
        for name in ("delay", "bring_up"):
            seconds = getattr(self, name)
            if seconds is None and name == "bring_up":
                continue
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise InvalidInputError(
                    f"RetryPolicy {name} must be a number of seconds, not "
                    f"{type(seconds).__name__}"
                )
            if not 0 <= seconds < math.inf:  # NaN too
                raise InvalidInputError(
                    f"RetryPolicy {name} must be 0 or more seconds (and finite), not {seconds}"
                )
        statuses = self.statuses
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise InvalidInputError(
                "RetryPolicy statuses must be a set of exit statuses, not "
                f"{type(statuses).__name__}"
            )
        statuses = frozenset(statuses)
        for status in statuses:
            check.count(status, "each of RetryPolicy statuses", minimum=0)
        object.__setattr__(self, "statuses", statuses)


DEFAULT_RETRY = RetryPolicy()
# The command line's policy: a kill during the first minute of a machine's life, before the
# command printed anything, is run again once; anything else is the command's own status.
BRING_UP_RETRY = RetryPolicy(bring_up=60.0)
# No second run at all (`--no-retry`).
NO_RETRY = RetryPolicy(attempts=1)


def _launch_spec(spec: object) -> LaunchSpec:
    if not isinstance(spec, LaunchSpec):
        raise InvalidInputError(f"spec must be a LaunchSpec, not {type(spec).__name__}")
    return spec


def _retry_policy(retry: object) -> RetryPolicy:
    if not isinstance(retry, RetryPolicy):
        raise InvalidInputError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
    return retry


def _smolvm(smolvm: object) -> sv.Smolvm:
    if smolvm is None:
        return sv.Smolvm()
    if not isinstance(smolvm, sv.Smolvm):
        raise InvalidInputError(
            f"smolvm must be a bottle.smolvm.Smolvm or None, not {type(smolvm).__name__}"
        )
    return smolvm


class SmolmachinesBottle(Bottle):
    """A smolvm machine that runs the agent and scripts as a chosen guest user."""

    def __init__(
        self,
        machine_name: str,
        *,
        prompt_path: str | None = None,
        guest_env: Mapping[str, str] | None = None,
        secret_env: Mapping[str, str] | None = None,
        agent_command: str = "claude",
        agent_prompt_mode: PromptMode | str = "append_file",
        agent_provider_template: str = "claude",
        terminal_title: str = "",
        terminal_color: str = "",
        agent_workdir: str | None = None,
        agent_user: str = "node",
        smolvm: sv.Smolvm | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.machine_name = check.machine_name(machine_name)
        self.prompt_path = (
            None if prompt_path is None else check.guest_path(prompt_path, "prompt path")
        )
        self.guest_env = dict(check.env_mapping(guest_env, "guest_env"))
        _check_names(self.guest_env, Param("guest_env"), host=False)
        secrets = check.env_mapping(secret_env, "secret_env")
        _check_names(secrets, Param("secret_env"), host=True)
        for key in secrets:
            if key in self.guest_env:
                raise InvalidInputError(
                    Message(
                        "{key!r} is in both {env} and {secrets}",
                        key=key,
                        env=Param("guest_env"),
                        secrets=Param("secret_env"),
                    )
                )
        self._secret_env = secrets
        check.no_nul(agent_command, "agent command")
        if not agent_command:
            raise InvalidInputError("agent command is empty")
        self.agent_command = agent_command
        self.agent_prompt_mode = PromptMode.parse(agent_prompt_mode)
        self.agent_provider = get_provider(agent_provider_template)
        self.agent_provider_template = self.agent_provider.name
        self.terminal_title = terminal.sanitize_title(terminal_title)
        self.terminal_color = terminal.validate_color(terminal_color) if terminal_color else ""
        self.agent_user = check.user_name(agent_user)
        # The default follows the agent's user: its home.
        self.agent_workdir = check.guest_path(
            agent_workdir if agent_workdir is not None else home_for(agent_user), "agent workdir"
        )
        self.retry = _retry_policy(retry)
        self._smolvm = _smolvm(smolvm)
        self._guest_users: dict[bool, str] = {}
        # time.monotonic() when `launch` had started the machine: its age for the retry policy.
        self._up_since: float | None = None
        self._ids: dict[str, tuple[int, int]] = {}
        # Set by `launch`: the machine's teardown, which a detached session can take over.
        self._handover: _Handover | None = None
        # Set by the command line's light path (bottle._quickexec) when it has made the first
        # run of a streamed command itself: `run_command` finishes that run, never makes it
        # again.
        self._handed: ew.Ran | None = None

    @classmethod
    def from_spec(
        cls,
        spec: LaunchSpec,
        *,
        prompt_path: str | None = None,
        smolvm: sv.Smolvm | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> SmolmachinesBottle:
        """The bottle for the machine `spec` names: the one place a spec becomes a bottle.

        `launch` uses it for the machine it created; `bottle agent` for one that exists.
        `prompt_path` is the prompt's path in the guest (the spec's `prompt_file` is a host
        path that only `launch` copies in); `spec.workdir` defaults to the agent user's home.
        """
        provider = get_provider(_launch_spec(spec).agent_provider)
        return cls(
            spec.machine_name,
            prompt_path=prompt_path,
            guest_env=spec.env,
            secret_env=spec.secret_env,
            agent_command=spec.agent_command or provider.command,
            agent_prompt_mode=spec.prompt_mode or provider.prompt_mode,
            agent_provider_template=provider.name,
            terminal_title=spec.terminal_title,
            terminal_color=spec.terminal_color,
            agent_workdir=spec.workdir,
            agent_user=spec.agent_user,
            smolvm=smolvm,
            retry=retry,
        )

    def __repr__(self) -> str:
        secrets = f", secret_env=<{len(self._secret_env)} hidden>" if self._secret_env else ""
        return f"SmolmachinesBottle({self.machine_name!r}{secrets})"

    @property
    def name(self) -> str:
        """The machine name (the replaced class's attribute; same as `machine_name`)."""
        return self.machine_name

    # --- command lines -------------------------------------------------------------------

    @property
    def secret_names(self) -> list[str]:
        """Names of the secret variables (their values are never exposed)."""
        return list(self._secret_env)

    def env_assignments(self, user: str = "node") -> list[str]:
        """`HOME=…`, `USER=…` for `user`, then the bottle's env in insertion order."""
        check.user_name(user)
        return ew.user_env(user) + [f"{key}={value}" for key, value in self.guest_env.items()]

    # --- who guest commands run as ------------------------------------------------------

    def _kinds_differ(self) -> bool:
        return ew.kinds_differ(self._smolvm.version)

    def _guest_id(self, command: Sequence[str], *, interactive: bool) -> re.Match[str]:
        # Often the bottle's first exec, so it gets the retry policy: a short exec can be
        # SIGKILLed while the VM is still coming up.
        args = sv.exec_args(self.machine_name, command, interactive=interactive)
        result = self._captured(args, None)
        m = _ID.search(result.stdout)
        if result.error is not None or result.returncode != 0 or m is None:
            raise _ProbeError(result, self.machine_name, command)
        return m

    def _kept_key(self, kind: bool) -> list[object]:
        # The guard in the guest (`_guarded`, the wrapper) notices a machine made again.
        return ew.guest_key(self._smolvm.identity, self.machine_name, kind, os.environ)

    def _kept_guest(self, kind: bool) -> _Kept | None:
        found = ew.kept_guest(_cache.load(_GUEST, self._kept_key(kind)))
        return None if found is None else _Kept(kind, *found)

    def guest_user(self, *, interactive: bool = False) -> str:
        """Who guest commands run as on this machine: learnt once (`id` in the guest), cached.

        `interactive` asks about `-i`/`-t` sessions, which smolvm 1.3.0 to 1.5.x runs as the
        image's USER while captured commands still run as root. A user without a name in the
        guest's passwd is given as its uid. The answer is also kept in bottle's cache directory,
        where a later process uses it only behind a check in the guest (see `exec`).
        """
        key = interactive and self._kinds_differ()
        if key not in self._guest_users:
            self._learn(key, self._guest_id(["id"], interactive=key))
        return self._guest_users[key]

    def _learn(self, kind: bool, m: re.Match[str]) -> str:
        """Take the guest's `id` output (`m`, of `_ID`) as who it runs commands of `kind` as,
        here and in bottle's cache; return the user."""
        user = m.group(2) or m.group(1)
        self._guest_users[kind] = user
        ident = f"uid={m.group(1)}" + (f"({m.group(2)})" if m.group(2) is not None else "")
        if self._smolvm.keeps_guest_answers:
            _cache.store(_GUEST, self._kept_key(kind), {"user": user, "id": ident})
        log.info(
            "machine %r runs %s guest commands as %r (smolvm %s)",
            self.machine_name,
            "interactive" if kind else "captured" if self._kinds_differ() else "all",
            user,
            self._smolvm.version_text,
        )
        return user

    def _refused(self, found: _Kept, said: str) -> None:
        """The wrapper would not run a command as the kept answer `found` had it: the machine
        is another one under the same name. What it said is the guest's `id`: learn from it."""
        log.info(
            "machine %r no longer runs guest commands as %r (bottle's cache was stale): %s",
            self.machine_name,
            found.user,
            said,
        )
        m = _ID.search(said)
        if m is None:
            _cache.forget(_GUEST, self._kept_key(found.kind))
        else:
            self._learn(found.kind, m)

    def _user_ids(self, user: str) -> tuple[int, int]:
        if user not in self._ids:
            m = self._guest_id(["id", "--", user], interactive=False)
            self._ids[user] = int(m.group(1)), int(m.group(3))
        return self._ids[user]

    def _as_user(
        self, user: str, *, interactive: bool, kept: bool = False
    ) -> tuple[list[str], str | None, _Kept | None]:
        """The guest command's prefix to run as `user`, smolvm's `--user` value if used, and the
        kept answer it rests on when that is not yet checked in this process (`kept=True`
        allows one: the caller must run the command behind `_guarded`)."""
        assignments = ["env", *self.env_assignments(user)]
        if self._smolvm.has_exec_user_option():
            return assignments, user, None
        kind = interactive and self._kinds_differ()
        found = None
        if kept and kind not in self._guest_users:
            found = self._kept_guest(kind)
        if found is not None:
            try:
                return self._prefix(user, found.user, assignments), None, found
            except GuestUserError:
                # Refuse only on an answer learnt now: the machine may be another one.
                _cache.forget(_GUEST, self._kept_key(kind))
        running_as = self.guest_user(interactive=interactive)
        return self._prefix(user, running_as, assignments), None, None

    def _prefix(self, user: str, running_as: str, assignments: list[str]) -> list[str]:
        switch = ew.user_switch(user, running_as)
        if switch is not None:
            return [*switch, *assignments]
        raise GuestUserError(
            f"machine {self.machine_name!r} runs guest commands as {running_as!r} (the image's "
            f"USER; smolvm {self._smolvm.version_text} has no option to choose another), and "
            f"only root can switch users, so they cannot run as {user!r}. Run as "
            f"{running_as!r}, or use an image whose USER is {user!r} or root",
            running_as=running_as,
            wanted=user,
            version=self._smolvm.version,
        )

    def agent_argv(self, argv: Sequence[str], *, tty: bool = True) -> list[str]:
        """The full smolvm command line of an agent run, starting with the literal `smolvm`.

        Learns who the guest runs commands as on first use (one captured exec), so the machine
        must be running.

        Raises:
            GuestUserError: the agent's user cannot be reached on this machine.
            BottleError: who the guest runs as could not be learnt (the machine is missing or
                stopped, …); its `result` is the probe's `ExecResult`.
        """
        args = check.argv(argv)
        check.flag(tty, "tty")
        guest, user, _ = self._as_user(self.agent_user, interactive=True)
        guest.append(self.agent_command)
        guest += agent_args(
            self.agent_prompt_mode, self.prompt_path, args, provider=self.agent_provider
        )
        exec_args = sv.exec_args(
            self.machine_name,
            guest,
            tty=tty,
            interactive=not tty,
            env_names=self.secret_names,
            workdir=self.agent_workdir,
            user=user,
        )
        return ["smolvm", *exec_args]

    def relay_argv(self, argv: Sequence[str]) -> list[str]:
        """One command line running the agent through the relay (`python -m bottle.relay`).

        Run it with `child_env()` as its environment, or the secrets will not reach the guest.
        """
        full = self.agent_argv(argv, tty=True)
        full[0] = self._smolvm.path
        return [
            sys.executable, "-m", "bottle.relay", "--output", "direct",
            "--machine", self.machine_name, "--hold-until-raw", "--", *full,
        ]

    def child_env(self) -> dict[str, str]:
        """The environment for host smolvm processes: os.environ plus the secrets."""
        env = dict(os.environ)
        env.update(self._secret_env)
        return env

    # --- running -------------------------------------------------------------------------

    def _not_running(self) -> tuple[BottleError | None, dict[str, object]]:
        """Why the machine cannot take a session now (None when it is running), and its status."""
        try:
            status = self._smolvm.status(self.machine_name)
        except MachineNotFoundError:
            return MachineNotFoundError(
                f"machine {self.machine_name!r} does not exist", machine=self.machine_name
            ), {}
        except SmolvmCommandError as exc:
            return exc, {}
        state = str(status.get("state", "unknown"))
        if state != "running":
            return MachineNotRunningError(
                f"machine {self.machine_name!r} is not running (state: {state}); "
                f"start it with: smolvm machine start -n {self.machine_name}",
                machine=self.machine_name,
            ), status
        return None, status

    def _agent_missing(self, status: Mapping[str, object]) -> BottleError | None:
        """Whether the agent's command resolves for its user, with the PATH and env the session
        will have (one captured exec of `command -v` in the agent's workdir); None when it does.
        """
        command = shlex.quote(self.agent_command)
        result = self.exec(
            f"command -v {command} || {{ printf 'PATH=%s\\n' \"$PATH\"; exit 127; }}",
            user=self.agent_user,
            workdir=self.agent_workdir,
        )
        if result.ok:
            log.debug("agent %s in machine %r: %s", self.agent_command, self.machine_name,
                      result.stdout.strip())  # fmt: skip
            return None
        if result.error is not None:
            return result.error
        if result.returncode != 127 or result.retry_exhausted:
            try:
                result.check(f"`command -v {self.agent_command}` in machine {self.machine_name!r}")
            except BottleError as exc:
                return exc
        path = _last(result.stdout)
        image = status.get("image")
        where = f"machine {self.machine_name!r}" + (f" (image {image})" if image else " (no image)")
        provider = self.agent_provider
        if provider.install_command and self.agent_command == provider.command:
            fix = Message(
                "install it with {install} ({how}), or use an image that has it",
                install=Param("install_agent", True),
                how=" ".join(provider.install_command),
            )
        else:
            fix = Message("use an image that has it")
        return AgentNotFoundError(
            Message(
                "{command!r} is not found for user {user!r} in {where}"
                + (f", on its {path}" if path.startswith("PATH=") else "")
                + ": {fix}",
                command=self.agent_command,
                user=self.agent_user,
                where=where,
                fix=fix,
            ),
            command=self.agent_command,
            user=self.agent_user,
            machine=self.machine_name,
        )

    def install_agent(self) -> None:
        """Install the agent provider's CLI in the guest, as root, the way the provider table
        says (`AgentProvider.install_command`: npm for claude and codex).

        The guest must be able to run commands as root (an image without USER, or a smolvm with
        `exec --user`), have the installer (npm) on its PATH, and reach the provider's
        `install_hosts` (see `SmolmachinesBottleBackend.launch`).

        Raises:
            InvalidInputError: the provider has no install command.
            AgentInstallError: the installer is missing, cannot run as root, or failed.
            SmolvmError: smolvm failed (the machine is missing or stopped, …).
        """
        self._ensure_open()
        provider = self.agent_provider
        if not provider.install_command:
            raise InvalidInputError(
                f"agent provider {provider.name!r} has no install command: use an image that "
                f"has {provider.command!r}"
            )
        tool = provider.install_command[0]
        install = shlex.join(provider.install_command)
        result = self.exec(
            f"command -v {shlex.quote(tool)} >/dev/null || exit 127; exec {install}", user="root"
        )
        if isinstance(result.error, GuestUserError):
            raise AgentInstallError(
                Message(
                    "{install} runs `{how}` as root, and machine {machine!r} runs guest "
                    "commands as {user!r} (its image's USER) with no way to root on smolvm "
                    "{version}: use an image that has {command!r}, or one without a USER",
                    install=Param("install_agent", True),
                    how=install,
                    machine=self.machine_name,
                    user=result.error.running_as,
                    version=self._smolvm.version_text,
                    command=provider.command,
                )
            ) from None
        if result.error is not None:
            raise result.error
        for line in (result.stdout + result.stderr).splitlines():
            if line.strip():
                log.info("installing %s in machine %r: %s", provider.name, self.machine_name,
                         line.strip())  # fmt: skip
        if result.returncode == 127:
            raise AgentInstallError(
                f"cannot install {provider.command!r} in machine {self.machine_name!r}: "
                f"{tool!r} is not found on root's PATH there (use an image with it, such as "
                f"node:22, or one that has {provider.command!r})"
            )
        if not result.ok:
            detail = _last(result.stderr) or _last(result.stdout)
            raise AgentInstallError(
                f"`{install}` in machine {self.machine_name!r} failed with status "
                f"{result.returncode}" + (f": {detail}" if detail else "")
            )

    @overload
    def exec_agent(
        self,
        argv: Sequence[str],
        *,
        tty: bool = True,
        record: str | os.PathLike[str] | Recording | None = None,
        record_input: bool = False,
        detach: Literal[False] = False,
    ) -> int: ...

    @overload
    def exec_agent(
        self,
        argv: Sequence[str],
        *,
        tty: bool = True,
        record: str | os.PathLike[str] | Recording | None = None,
        record_input: bool = False,
        detach: Literal[True],
        session: str | None = None,
    ) -> Session: ...

    def exec_agent(
        self,
        argv: Sequence[str],
        *,
        tty: bool = True,
        record: str | os.PathLike[str] | Recording | None = None,
        record_input: bool = False,
        detach: bool = False,
        session: str | None = None,
    ) -> int | Session:
        """Run the agent; return smolvm's exit status (128+N when it died of signal N).

        Whatever goes wrong once the arguments are accepted (no such machine, a stopped one,
        the VM dying mid-session) is a status, as with the replaced class: 1 for smolvm's
        failures, 127 when the agent's command is not there for its user (checked before the
        session, which then never starts). `run_agent` gives the same status with the precise
        error.

        ``record`` names a new file that receives the session as an asciicast v2 recording
        (see `bottle.relay.run`), or is a `bottle.relay.Recording` made beforehand (before a
        launch, say, so that a file that cannot be made is refused before any machine is);
        the relay then copies smolvm's output instead of letting it write to the terminal
        itself. A file named here is created (mode 0600) before anything runs and removed
        again if no session started. ``record_input`` records typed input too. Secrets never
        reach the file: they go to smolvm through its environment, and the header names only
        ``TERM`` and ``SHELL``.

        With ``detach``, the session starts in a session holder and this returns its
        `bottle.sessions.Session` at once (see `run_agent`).

        Raises:
            InvalidInputError: bad arguments (a ``record`` file that exists or cannot be
                created, a recording without ``tty``), before anything runs.
            SmolvmNotFoundError, SmolvmNotExecutableError: smolvm cannot be run at all (also
                `FileNotFoundError` / `PermissionError`).
        """
        if detach:
            return self.run_agent(
                argv, tty=tty, record=record, record_input=record_input, detach=True,
                session=session,
            )  # fmt: skip
        return self.run_agent(
            argv, tty=tty, record=record, record_input=record_input
        ).returncode

    @overload
    def run_agent(
        self,
        argv: Sequence[str],
        *,
        tty: bool = True,
        record: str | os.PathLike[str] | Recording | None = None,
        record_input: bool = False,
        detach: Literal[False] = False,
    ) -> AgentResult: ...

    @overload
    def run_agent(
        self,
        argv: Sequence[str],
        *,
        tty: bool = True,
        record: str | os.PathLike[str] | Recording | None = None,
        record_input: bool = False,
        detach: Literal[True],
        session: str | None = None,
    ) -> Session: ...

    def run_agent(
        self,
        argv: Sequence[str],
        *,
        tty: bool = True,
        record: str | os.PathLike[str] | Recording | None = None,
        record_input: bool = False,
        detach: bool = False,
        session: str | None = None,
    ) -> AgentResult | Session:
        """Run the agent like `exec_agent`; the result's `check()` raises what went wrong.

        With `tty`, the session runs in process through `bottle.relay.run`, with the terminal
        title/colour set before and reset after (only when stdout is a terminal). Without,
        it is `smolvm machine exec -i`: this process's stdin is forwarded and the agent's output
        appears as it comes, uncapped. Before the session, one captured exec checks that the
        agent's command is there (`command -v`, as the agent's user, in its workdir, with its
        env). The result's `error` is `MachineNotFoundError` / `MachineNotRunningError` /
        `GuestUserError` when no session could start (status 1, nothing run),
        `AgentNotFoundError` when the agent's command is not there (status 127, nothing run),
        and `ConnectionLostError` when smolvm exited 1 and the machine is no longer running:
        exit 1 is the agent's or smolvm's, and smolvm's words for a dying VM change between
        releases, so the machine's state decides.

        With ``detach``, the same smolvm command runs in a session holder
        (`bottle.sessions.start`: its own pty, not this process's terminal) and this returns
        the `bottle.sessions.Session` once it runs; clients attach to it with
        `bottle.sessions.connect`. ``session`` names it (default: the machine's name, made
        unique). Failing to start raises the precise error (a detached session has no status
        to return). A bottle from `launch` hands its machine's teardown to the session: the
        machine outlives the `launch` block and is stopped and deleted once the agent exits
        (by the holder, or by `Session.teardown` if the holder died).
        """
        self._ensure_open()
        check.argv(argv)
        check.flag(tty, "tty")
        check.flag(record_input, "record_input")
        check.flag(detach, "detach")
        # API-only mistakes (the command line cannot make them): said in Python terms.
        if detach and not tty:
            raise InvalidInputError("a detached session is a terminal session: give tty=True")
        if not detach and session is not None:
            raise InvalidInputError("session names a detached session: give detach=True too")
        if detach and self._handover is not None and self._handover.taken is not None:
            raise InvalidInputError(
                f"machine {self.machine_name!r} already belongs to detached session "
                f"{self._handover.taken!r}, which deletes it when its agent exits; start "
                "further sessions in a machine of their own"
            )
        if record is None:
            if record_input:
                raise InvalidInputError(
                    Message(
                        "{record_input} needs a recording: give {record}=FILE",
                        record_input=Param("record_input"),
                        record=Param("record"),
                    )
                )
            return self._session(argv, tty, None, False, detach, session)
        if not tty:
            raise InvalidInputError(
                Message("recording needs a terminal session ({tty})", tty=Param("tty", True))
            )
        from bottle.relay import Recording

        if isinstance(record, Recording):
            return self._session(argv, tty, record, record_input, detach, session)
        # Made first, so that a file that cannot be is refused before anything runs; removed
        # again when no session started.
        with Recording(record) as recording:
            return self._session(argv, tty, recording, record_input, detach, session)

    def _session(
        self,
        argv: Sequence[str],
        tty: bool,
        recording: Recording | None,
        record_input: bool,
        detach: bool,
        name: str | None,
    ) -> AgentResult | Session:
        refused, machine = self._not_running()
        full: list[str] = []
        missing = None
        if refused is None:
            refused = missing = self._agent_missing(machine)
        if refused is None:
            try:
                full = self.agent_argv(argv, tty=tty)
            except GuestUserError as exc:
                refused = exc
            except _ProbeError as exc:
                refused = exc.result.error or exc
        if refused is not None:
            if detach:
                raise refused
            # 127: what the shell (or `env`) says of a command it cannot find.
            status = 127 if isinstance(missing, AgentNotFoundError) else 1
            return self._not_started("agent session", refused, status)
        full[0] = self._smolvm.path
        env = self.child_env()
        if detach:
            return self._start_detached(full, env, name, recording, record_input)
        log.debug("agent session in %s: %s", self.machine_name, full)
        with _runnable(full[0]):
            if tty:
                status = self._run_tty(full, env, recording, record_input)
            else:
                status = sv.run_attached(full, env=env)
        return self._ended("agent session", exit_status(status))

    def _not_started(self, what: str, refused: BottleError, status: int = 1) -> AgentResult:
        """The result of a session or command that could not start (logged: a status alone
        would not say why)."""
        log.error(
            "%s in machine %r not started: %s", what, self.machine_name, refused,
            extra=RETURNED_ERROR,
        )  # fmt: skip
        return AgentResult(status, refused)

    def _ended(self, what: str, status: int) -> AgentResult:
        """The result of a session or command whose smolvm wrote to the user's terminal itself."""
        log.info("%s in machine %r ended with status %d", what, self.machine_name, status)
        if status == 1:
            # Exit 1 is either the command's own status or smolvm's error; the error text went
            # to the user's terminal, so ask smolvm whether the machine survived.
            try:
                state = self._smolvm.state(self.machine_name)
            except Exception:  # the probe is best effort; the status stands
                state = "running"
            if state != "running":
                lost = ConnectionLostError(
                    f"connection to the VM lost: machine {self.machine_name!r} is "
                    f"{state or 'gone'} after the {what} ended",
                    returncode=status,
                    machine=self.machine_name,
                )
                log.error("%s", lost, extra=RETURNED_ERROR)
                return AgentResult(status, lost)
        return AgentResult(status)

    def _start_detached(
        self,
        full: list[str],
        env: dict[str, str],
        name: str | None,
        record: Recording | None,
        record_input: bool,
    ) -> Session:
        from bottle import sessions

        handover = self._handover
        plan = handover.plan() if handover is not None else None
        with _runnable(full[0]):
            started = sessions.start(
                full,
                name=name,
                machine=self.machine_name,
                env=env,
                hold_until_raw=True,
                record=record,
                record_input=record_input,
                record_title=self.terminal_title or f"{self.agent_command} in {self.machine_name}",
                secret_names=self.secret_names,
                teardown=plan,
                terminal_title=self.terminal_title,
                terminal_color=self.terminal_color,
            )
        if handover is not None:
            handover.taken = started.name
        log.info(
            "agent session in machine %r detached: session %r (holder pid %s)%s",
            self.machine_name,
            started.name,
            started.pid,
            "; it tears the machine down when the agent exits" if plan else "",
        )
        return started

    def _run_tty(
        self,
        full: list[str],
        env: dict[str, str],
        record: Recording | None,
        record_input: bool,
    ) -> int:
        from bottle import relay

        def session() -> int:
            if record is None:
                return relay.run(
                    full, env=env, machine=self.machine_name, hold_until_raw=True, output="direct"
                )
            # Recording: the relay must see the output, so it copies it.
            return relay.run(
                full,
                env=env,
                machine=self.machine_name,
                hold_until_raw=True,
                output="copy",
                record=record,
                record_input=record_input,
                record_title=self.terminal_title or f"{self.agent_command} in {self.machine_name}",
            )

        deco = terminal.decoration(self.terminal_title, self.terminal_color)
        if deco is None or not os.isatty(1):
            return session()
        _write_all(1, deco.start.encode())
        try:
            return session()
        finally:
            with contextlib.suppress(OSError):
                _write_all(1, deco.reset.encode())

    def run_command(
        self,
        command: Sequence[str],
        *,
        user: str = "node",
        workdir: str | None = None,
        stdin: bool = False,
        tty: bool = False,
    ) -> AgentResult:
        """Run `command` (a program and its arguments, no shell) in the guest as `user`, with
        its output passing through as it comes; return its status.

        Nothing is captured: the command writes to this process's stdout and stderr, every byte
        as it wrote it, when it writes it, without a size limit (smolvm's `exec -i`). With
        `stdin` it reads this process's stdin, its end included; without, it reads end-of-input
        at once. `tty` runs it on a terminal through bottle's relay (`exec -i -t`), sized like
        this process's terminal and resized with it, as an agent session is; its stderr then
        comes on that terminal too. `workdir` is smolvm's `-w` (default: the image's WORKDIR,
        else `/`).

        Run again only when smolvm killed it before it started (status 137: a machine's bring-
        up can do that) on a machine at most the bottle's `retry.bring_up` seconds old (60 when
        the policy sets none, as `BRING_UP_RETRY`), as often as `retry` allows, after its
        delay; the reason is logged. Any other status is the command's own, run once: what it
        printed is out, its input taken. On a terminal (`tty`), never. With `stdin`, this
        process's stdin is read only once the command has started, so such a run took none.

        Who the guest runs commands as may come from bottle's cache (see `exec`): the command
        then runs behind a check in the guest, and where the machine now runs commands as
        someone else (deleted and made again under the name), nothing has run, and it runs
        once as that machine needs. The guest needs /bin/sh for these checks.

        The result's `returncode` is the command's status (128+N when signal N ended it), or 1
        when the command could not run or smolvm failed around it; `error` is then that failure
        (also logged), which `check()` raises: `MachineNotFoundError`, `MachineNotRunningError`,
        `ConnectionLostError` (the VM went away), another `SmolvmError` (smolvm could not start
        the program: a bad `workdir`), `GuestUserError` (`user` cannot be reached).

        Raises:
            InvalidInputError: bad arguments, before anything runs.
            SmolvmNotFoundError, SmolvmNotExecutableError: smolvm cannot be run at all.
        """
        self._ensure_open()
        argv = check.argv(command, "command argument", "command")
        if not argv:
            raise InvalidInputError("command is empty: give the program to run")
        if "=" in argv[0]:
            # The guest runs `env NAME=VALUE… COMMAND`, which would take it for one of those.
            raise InvalidInputError(
                Message(
                    "the command {word!r} would be read as a variable assignment: set guest "
                    "variables with {env}",
                    word=argv[0],
                    env=Param("guest_env"),
                )
            )
        check.user_name(user)
        if workdir is not None:
            check.guest_path(workdir, Param("workdir"))
        check.flag(stdin, "stdin")
        check.flag(tty, "tty")
        what = "command" if not tty else "terminal session"
        if not tty:
            return self._run_streamed(argv, user, workdir, stdin, what)
        # smolvm's error line would go to the terminal past us: ask first, as for an agent.
        refused, _ = self._not_running()
        if refused is not None:
            return self._not_started(what, refused)
        return self._run_on_terminal(argv, user, workdir, stdin, what)

    def _streamed_retry(self) -> RetryPolicy:
        """The bottle's retry policy, within a bring-up (BRING_UP_RETRY's when it sets none):
        a streamed command's output is out as it comes, so the replaced class's rule (again
        on 137, whatever happened) cannot apply to it."""
        policy = self.retry
        if policy.bring_up is not None:
            return policy
        return RetryPolicy(policy.attempts, policy.delay, policy.statuses, BRING_UP_RETRY.bring_up)

    def _reach(
        self, user: str, kept: bool, what: str
    ) -> tuple[list[str], str | None, _Kept | None] | AgentResult:
        """`_as_user` for a streamed or terminal command (`interactive`), or the result of one
        that cannot start: `user` cannot be reached, or asking the guest failed."""
        try:
            return self._as_user(user, interactive=True, kept=kept)
        except GuestUserError as exc:
            return self._not_started(what, exc)
        except _ProbeError as exc:
            return self._not_started(what, exc.result.error or exc)

    def _run_streamed(
        self, argv: list[str], user: str, workdir: str | None, stdin: bool, what: str
    ) -> AgentResult:
        policy = self._streamed_retry()
        kept = True
        attempt = 1
        handed, self._handed = self._handed, None
        while True:
            may_retry = attempt < policy.attempts
            marks: sv.Marks | None
            if handed is not None:
                # Made by the light path, as this loop makes it (bottle._execwire's pieces).
                full, nonce = handed.argv, handed.nonce
                found = None if handed.found is None else _Kept(False, *handed.found)
                marks = handed_marks = sv.Marks(nonce)
                handed_marks.started, handed_marks.refusal = handed.started, handed.refusal
            else:
                reached = self._reach(user, kept, what)
                if isinstance(reached, AgentResult):
                    return reached
                prefix, option, found = reached
                # Wrapped when bottle must hear from the guest before the command: whether the
                # kept answer still holds, whether the command started (a kill before it did
                # is the bring-up's, and takes no input: stdin is held until then).
                nonce = ew.new_nonce()
                marks = sv.Marks(nonce) if found is not None or may_retry else None
                guest = [*prefix, *argv]
                if marks is not None:
                    guest = _wrapped(nonce, found, guest)
                full = [self._smolvm.path, *sv.exec_args(
                    self.machine_name, guest, interactive=True, env_names=self.secret_names,
                    workdir=workdir, user=option,
                )]  # fmt: skip
            log.debug("%s in %s: %s", what, self.machine_name, full)
            settled: list[SmolvmCommandError | None] = []

            def smolvms(
                raw: int, line: str, full: list[str] = full,
                settled: list[SmolvmCommandError | None] = settled,
            ) -> bool:  # fmt: skip
                # A failing last line in smolvm's shape that bottle cannot read: held back
                # until the machine's state says whose it is (shown only if the command's).
                settled.append(self._settle(full, exit_status(raw), line))
                return settled[-1] is not None

            if handed is not None:
                status, said = sv.finish_streamed(handed.status, handed.kept, smolvms)
                handed = None
            else:
                with _runnable(full[0]):
                    status, said = sv.run_streamed(
                        full, env=self.child_env(), stdin=None if stdin else subprocess.DEVNULL,
                        marks=marks, judge=smolvms,
                    )  # fmt: skip
            status = exit_status(status)
            if found is not None and marks is not None and marks.refusal is not None:
                # Nothing ran and no input was taken: run it as the machine now says.
                self._refused(found, marks.refusal)
                kept = False
                continue
            error = settled[0] if settled else self._settle(full, status, said)
            if error is not None:
                log.error("%s in machine %r: %s", what, self.machine_name, error,
                          extra=RETURNED_ERROR)  # fmt: skip
                return AgentResult(status, error)
            started = marks is None or marks.started
            if found is not None and started:
                self._guest_users.setdefault(found.kind, found.user)  # the check passed
            if may_retry and status in policy.statuses and not started:
                assert policy.bring_up is not None
                past, why = self._past_bring_up("", "", policy.bring_up)
                if not past:
                    log.warning(
                        "exec in machine %r exited with status %d and no output before the "
                        "command started, %s (attempt %d of %d); running it again in %.1f s",
                        self.machine_name, status, why, attempt, policy.attempts, policy.delay,
                    )  # fmt: skip
                    time.sleep(policy.delay)
                    attempt += 1
                    continue
                log.info("%s in machine %r exited with status %d; not run again: %s",
                         what, self.machine_name, status, why)  # fmt: skip
            log.info("%s in machine %r ended with status %d", what, self.machine_name, status)
            return AgentResult(status)

    def _run_on_terminal(
        self, argv: list[str], user: str, workdir: str | None, stdin: bool, what: str
    ) -> AgentResult:
        from bottle import relay

        # On a terminal the wrapper refuses without a word (a line there is the user's to
        # read, not ours), and what the relay forwarded to a refused command is gone: a kept
        # answer is used only where that can be no more than keys typed ahead.
        kept = not stdin or os.isatty(0)
        while True:
            reached = self._reach(user, kept, what)
            if isinstance(reached, AgentResult):
                return reached
            prefix, option, found = reached
            guest = [*prefix, *argv]
            if found is not None:
                guest = _wrapped(os.urandom(8).hex(), found, guest)
            full = [self._smolvm.path, *sv.exec_args(
                self.machine_name, guest, tty=True, env_names=self.secret_names,
                workdir=workdir, user=option,
            )]  # fmt: skip
            log.debug("%s in %s: %s", what, self.machine_name, full)
            with _runnable(full[0]):
                status = relay.run(
                    full, env=self.child_env(), stdin_fd=0 if stdin else -1,
                    machine=self.machine_name, hold_until_raw=True, output="direct",
                )  # fmt: skip
            status = exit_status(status)
            if found is None:
                break
            if status == _REFUSED:
                # The command's own 125, or the wrapper's: the guest says which.
                try:
                    m = self._guest_id(["id"], interactive=True)
                except _ProbeError:
                    break
                if not m.group(0).startswith(found.ident + " "):
                    self._refused(found, m.string)
                    kept = False
                    continue
            self._guest_users.setdefault(found.kind, found.user)
            break
        return self._ended(what, status)

    def shell(self, *, user: str = "node", workdir: str | None = None) -> AgentResult:
        """An interactive shell in the guest as `user`, through the relay: `run_command` with
        `tty` and `stdin`. The shell is the user's own from the guest's /etc/passwd when it
        can be run, else /bin/sh, and not a login shell (no profile, no PAM session: a login
        session can hang on a minimal guest, and its profile resets PATH).
        """
        return self.run_command(
            ["/bin/sh", "-c", _SHELL], user=user, workdir=workdir, stdin=True, tty=True
        )

    def exec(self, script: str, *, user: str = "node", workdir: str | None = None) -> ExecResult:
        """Run `/bin/sh -c SCRIPT` as `user` (in `workdir`, smolvm's `-w`, when given); capture
        text output (bad bytes replaced). Without `workdir` it runs where smolvm puts it (the
        image's WORKDIR, else `/`).

        Returns the last `ExecResult`, as the replaced class did, even when smolvm failed (its
        `Error:` line is in `stderr`, the precise error in `error`) or every attempt of the
        retry policy ended with a retryable status (`retry_exhausted`, earlier attempts in
        `retried`). `result.check()` raises the precise error. Each retry is logged. A failure
        whose `Error:` line bottle cannot read costs one `smolvm machine status`: a machine that
        is gone or stopped makes it smolvm's error, a running one leaves the guest's status.
        """
        self._ensure_open()
        check.no_nul(script, "script")
        check.user_name(user)
        if workdir is not None:
            check.guest_path(workdir, Param("workdir"))
        return self._exec_as(["/bin/sh", "-c", script], user=user, workdir=workdir)

    def _exec_as(
        self, command: list[str], *, user: str, workdir: str | None, kept: bool = True
    ) -> ExecResult:
        try:
            prefix, option, found = self._as_user(user, interactive=False, kept=kept)
        except GuestUserError as exc:
            log.warning("exec in machine %r: %s", self.machine_name, exc, extra=RETURNED_ERROR)
            return ExecResult(1, "", f"bottle: {exc}\n", error=exc)
        except _ProbeError as exc:
            return exc.result
        nonce = os.urandom(8).hex()
        guest = [*prefix, *command]
        if found is not None:
            guest = _guarded(found.ident, nonce, prefix, command)
        args = sv.exec_args(
            self.machine_name, guest, env_names=self.secret_names, workdir=workdir, user=option
        )
        result = self._captured(args, self.child_env())
        if found is None:
            return result
        if _guard_stopped(result, nonce):
            # Another machine under this name since the answer was kept: the command did not
            # run. Learn who this one runs commands as, and run it as that.
            log.info(
                "machine %r no longer runs guest commands as %r (bottle's cache was stale): "
                "asking it again",
                self.machine_name,
                found.user,
            )
            _cache.forget(_GUEST, self._kept_key(found.kind))
            return self._exec_as(command, user=user, workdir=workdir, kept=False)
        if result.error is None and result.returncode not in self.retry.statuses:
            # The guard let the command through: the kept answer holds for this process.
            self._guest_users.setdefault(found.kind, found.user)
        return result

    def _captured(self, args: list[str], env: dict[str, str] | None) -> ExecResult:
        """Run a captured exec under the retry policy; the last result, failures included."""
        policy = self.retry
        results: list[ExecResult] = []
        for attempt in range(1, policy.attempts + 1):
            proc, error = self._smolvm.call(args, env=env, machine=self.machine_name, guest=True)
            status = exit_status(proc.returncode)
            retryable = error is None and status in policy.statuses and policy.attempts > 1
            if error is not None:
                log.warning(
                    "exec in machine %r: %s", self.machine_name, error, extra=RETURNED_ERROR
                )
            why = ""
            if retryable and policy.bring_up is not None:
                refused, why = self._past_bring_up(proc.stdout, proc.stderr, policy.bring_up)
                if refused:
                    log.info(
                        "exec in machine %r exited with status %d; not run again: %s",
                        self.machine_name,
                        status,
                        why,
                    )
                    retryable = False
            result = ExecResult(
                status,
                proc.stdout,
                proc.stderr,
                error=error,
                retried=tuple(results),
                retry_exhausted=retryable and attempt == policy.attempts,
            )
            if not retryable:
                return result
            results.append(result)
            if attempt < policy.attempts:
                log.warning(
                    "exec in machine %r exited with status %d%s (attempt %d of %d); "
                    "running it again in %.1f s",
                    self.machine_name,
                    status,
                    f" and no output {why}" if why else "",
                    attempt,
                    policy.attempts,
                    policy.delay,
                )
                time.sleep(policy.delay)
        statuses = ", ".join(str(r.returncode) for r in results)
        log.warning(
            "exec in machine %r failed %d times (statuses: %s); giving up",
            self.machine_name,
            len(results),
            statuses,
            extra=RETURNED_ERROR,
        )
        return results[-1]

    def _past_bring_up(self, stdout: str, stderr: str, limit: float) -> tuple[bool, str]:
        """Whether a killed run is past the VM's bring-up (so its status is its own), and why."""
        if stdout or stderr:
            return True, "it printed output, so the command ran (a bring-up kill comes first)"
        age, since = self._machine_age()
        if age is None:
            return True, f"the machine's age cannot be told ({since})"
        if age > limit:
            return True, (
                f"machine {self.machine_name!r} has been up {age:.0f} s ({since}), past its "
                f"bring-up ({limit:g} s): the status is the command's own"
            )
        return False, (
            f"{age:.1f} s after the machine came up ({since}), within its {limit:g} s bring-up"
        )

    def _machine_age(self) -> tuple[float | None, str]:
        """Seconds the machine has been up, and how that was told (or why it could not be)."""
        if self._up_since is not None:
            return time.monotonic() - self._up_since, "timed from launch's start"
        try:
            status = self._smolvm.status(self.machine_name)
        except BottleError as exc:
            return None, f"smolvm machine status failed: {exc}"
        state = status.get("state")
        if state != "running":
            return None, f"it is {state}"
        pid = status.get("pid")
        if type(pid) is int and pid > 0:
            age = _vm_process_age(pid, self._smolvm.path)
            if age is not None:
                return age, f"its VM process {pid} started then"
        created = status.get("created_at")
        if isinstance(created, (int, float)) and not isinstance(created, bool):
            return max(0.0, time.time() - created), "timed from its creation"
        return None, "smolvm's status gives no pid or creation time"

    def cp_in(
        self,
        host_path: str | os.PathLike[str],
        container_path: str,
        *,
        owner: str | None = None,
    ) -> None:
        """Copy a regular host file into the guest at `container_path` (directories refused).

        smolvm writes the file as root:root. `owner` gives it to that user: with smolvm's
        `cp --uid/--gid` (1.9.0 and later; the ids are looked up in the guest), else with a
        `chown` run as root where guest commands run as root.

        Raises:
            GuestUserError: `owner` is wanted, smolvm is older than 1.9.0 and guest commands do
                not run as root (nothing is copied).
            SmolvmError: smolvm failed (the machine is missing or stopped, …).
        """
        self._ensure_open()
        src = check.host_file(host_path)
        check.guest_path(container_path)
        ids: tuple[int, int] | None = None
        chown = False
        if owner is not None:
            check.user_name(owner)
            try:
                if self._smolvm.version >= _CP_OWNER_SINCE:
                    ids = self._user_ids(owner)
                else:
                    running_as = self.guest_user()
            except _ProbeError as exc:
                raise (exc.result.error or exc) from None
            if ids is None:
                if running_as != "root":
                    raise GuestUserError(
                        f"cannot give {container_path} to {owner!r} in machine "
                        f"{self.machine_name!r}: smolvm {self._smolvm.version_text} has no "
                        f"`cp --uid/--gid` (smolvm 1.9.0 and later have) and guest commands run "
                        f"as {running_as!r}, not root, so they cannot chown it",
                        running_as=running_as,
                        wanted=owner,
                        version=self._smolvm.version,
                    )
                chown = True
        uid, gid = ids if ids is not None else (None, None)
        if ":" in src:
            # smolvm would read "a:b" as a download from machine "a"; hand it a plain name.
            import tempfile  # here only: a few ms of every command's start-up otherwise

            with tempfile.TemporaryDirectory(prefix="bottle-cp-") as tmp:
                link = os.path.join(tmp, "file")
                os.symlink(os.path.abspath(src), link)
                self._smolvm.cp_in(link, self.machine_name, container_path, uid=uid, gid=gid)
        else:
            self._smolvm.cp_in(src, self.machine_name, container_path, uid=uid, gid=gid)
        if chown and owner is not None:
            script = f"chown -- {shlex.quote(owner)}: {shlex.quote(container_path)}"
            self.exec(script, user="root").check(f"chown of {container_path}")

    # --- copies both ways, directories too ----------------------------------------------

    def upload(
        self,
        host_path: str | os.PathLike[str],
        guest_path: str,
        *,
        owner: str | None = None,
    ) -> str:
        """Copy a host file or directory into the guest, as `cp -r` and `docker cp` do; return
        the guest path written.

        A `guest_path` ending in `/`, or naming a directory that exists in the guest, receives
        the source under its own name; any other becomes the copy (missing parents made). A
        file goes by smolvm's `machine cp`, as `cp_in` (mode 0644, owned by root or by
        `owner`). A directory goes as one tar stream into `tar -x` in the guest (`exec -i`),
        run as root where guest commands can run as root, else as the user they run as: every
        byte, mode and modification time kept, owned by root, `owner` or that user; symbolic
        links are copied as links; device files, FIFOs and sockets are left out (logged).

        Raises:
            InvalidInputError: the source does not exist or is neither a file nor a directory;
                a bad guest path.
            GuestUserError: `owner` cannot be given the copy on this machine.
            SmolvmError: smolvm failed (the machine is missing or stopped, …).
            GuestCommandError: the guest's `tar` failed (a file in the way, no room, …).
        """
        self._ensure_open()
        src = _host_source(host_path)
        dst = check.guest_path(guest_path)
        if owner is not None:
            check.user_name(owner)
        name = os.path.basename(os.path.abspath(src))
        into = dst.endswith("/")
        target = posixpath.join(dst, name) if into else dst
        if os.path.isdir(src):
            if not into and self._guest_is_dir(dst):
                target = posixpath.join(dst, name)
            self._upload_tree(src, target, owner)
            return target
        try:
            self.cp_in(src, target, owner=owner)
        except SmolvmError as exc:
            # smolvm writes a file over the target: a directory there refuses it.
            if into or not self._guest_is_dir(dst, otherwise=exc):
                raise
            target = posixpath.join(dst, name)
            self.cp_in(src, target, owner=owner)
        return target

    def download(self, guest_path: str, host_path: str | os.PathLike[str]) -> str:
        """Copy a guest file or directory to the host, as `cp -r` and `docker cp` do; return
        the host path written.

        A `host_path` ending in `/` (made if missing), or naming an existing directory,
        receives the source under its own name; any other becomes the copy. A file goes by
        smolvm's `machine cp` into a new file beside the target, then renamed over it, so that
        a failure never touches a file already there (its mode is a new file's, as smolvm
        makes it). A directory comes as one tar stream from `tar -c` in the guest (`exec -i`,
        run as `upload` runs it), unpacked into the target (made, or merged into one that
        exists): every byte, permission bit and modification time kept, owned by this
        process's user, set-user-ID and set-group-ID bits dropped (as `cp` does); links are
        made as links and never gone through, so nothing is written outside the target;
        device files and FIFOs are left out (logged).

        Raises:
            InvalidInputError: bad paths; a directory that would replace a file, or the other
                way round; an archive member that would land outside the target.
            SmolvmError: smolvm failed (no such file in the guest, the machine is missing, …).
            GuestCommandError: the guest's `tar` failed.
        """
        self._ensure_open()
        src = check.guest_path(guest_path)
        name = posixpath.basename(src.rstrip("/"))
        if not name:
            raise InvalidInputError("the guest's / cannot be copied as a whole: name what is in it")
        dst = _host_path(host_path)
        made = dst.endswith(os.sep) and not os.path.lexists(dst)
        if made:
            os.makedirs(dst)
        try:
            return self._download(src, name, dst)
        except BaseException:
            if made:  # nothing came: the directory asked for goes again
                with contextlib.suppress(OSError):
                    os.rmdir(dst)
            raise

    def _download(self, src: str, name: str, dst: str) -> str:
        import tempfile  # where it is used: no exec needs it

        target = os.path.join(dst, name) if os.path.isdir(dst) else dst
        parent = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(parent):
            raise InvalidInputError(f"host directory {parent!r} does not exist")
        with tempfile.TemporaryDirectory(prefix=".bottle-cp-", dir=parent) as tmp:
            part = os.path.join(tmp, name)
            try:
                self._smolvm.run(
                    sv.cp_out_args(self.machine_name, src, part), machine=self.machine_name
                )
            except SmolvmError as exc:
                # smolvm reads regular files only.
                if not self._guest_is_dir(src, otherwise=exc):
                    raise
                self._download_tree(src, target)
                return target
            if os.path.isdir(target) and not os.path.islink(target):
                raise InvalidInputError(
                    f"cannot overwrite directory {target!r} with file {src} of machine "
                    f"{self.machine_name!r}"
                )
            os.replace(part, target)
        return target

    def _guest_is_dir(self, path: str, *, otherwise: BaseException | None = None) -> bool:
        """Whether `path` is a directory in the guest, asked as whoever guest commands run as.
        When the guest cannot be asked, `otherwise` (the failure that led here) is raised, or
        the reason."""
        script = f"test -d {shlex.quote(path)}"
        try:
            found = None if False in self._guest_users else self._kept_guest(False)
            # As bottle's cache has it, behind the check in the guest (`exec`).
            result = self.exec(script, user=found.user if found else self.guest_user())
            if found is not None and isinstance(result.error, GuestUserError):
                # The machine is another one now, whose user cannot become the kept one.
                result = self.exec(script, user=self.guest_user())
        except _ProbeError as exc:
            raise (otherwise or exc.result.error or exc) from None
        if result.error is not None:
            raise (otherwise or result.error) from None
        return result.returncode == 0

    def _tree_user(self, *, kept: bool) -> tuple[str, bool]:
        """Who packs or unpacks a directory in the guest: root where guest commands can run as
        root, else the user they run as; and whether that is only what bottle's cache says
        (`kept` allows it: the tar then runs behind the check in the guest)."""
        if self._smolvm.has_exec_user_option():
            return "root", False
        kind = self._kinds_differ()
        if kept and kind not in self._guest_users:
            found = self._kept_guest(kind)
            if found is not None:
                return found.user, True
        try:
            return self.guest_user(interactive=True), False
        except _ProbeError as exc:
            raise (exc.result.error or exc) from None

    def _tar(self, user: str, command: list[str], *, kept: bool) -> _Tar:
        """A tar at either end of a copy (`exec -i`, as `user`, who must be reachable; with
        `kept`, behind the check of the kept answer)."""
        prefix, option, found = self._as_user(user, interactive=True, kept=kept)
        guest, marks = [*prefix, *command], None
        if found is not None:
            nonce = os.urandom(8).hex()
            guest, marks = _wrapped(nonce, found, guest), sv.Marks(nonce)
        args = sv.exec_args(self.machine_name, guest, interactive=True, user=option)
        return _Tar([self._smolvm.path, *args], marks, found)

    def _tar_refused(self, tar: _Tar) -> bool:
        """Whether the check in the guest stopped the tar (learning who runs commands now)."""
        if tar.found is None or tar.marks is None:
            return False
        if tar.marks.refusal is None:
            if tar.marks.started:
                self._guest_users.setdefault(tar.found.kind, tar.found.user)
            return False
        self._refused(tar.found, tar.marks.refusal)
        return True

    def _settle(self, full: list[str], status: int, said: str) -> SmolvmCommandError | None:
        """smolvm's failure in an exec's stderr `said`, settled by the machine's state where
        the text cannot tell (`Smolvm.settle_exec_failure`); None: the guest's own status."""
        error = sv.classify_failure(full, status, said, machine=self.machine_name, guest=True)
        return self._smolvm.settle_exec_failure(
            full, status, said, machine=self.machine_name, error=error
        )

    def _tar_done(self, full: list[str], status: int, said: str, what: str) -> None:
        status = exit_status(status)
        if status == 0:
            return
        error = self._settle(full, status, said)
        if error is not None:
            raise error
        result = ExecResult(status, "", said)
        result.check(f"{what}: tar in machine {self.machine_name!r}")

    def _upload_tree(self, src: str, target: str, owner: str | None) -> None:
        kept = True
        while True:
            user, kept = self._tree_user(kept=kept)
            if owner is not None and user != "root" and owner != user:
                if kept:  # refused only on what the guest says now
                    kept = False
                    continue
                raise GuestUserError(
                    f"cannot give {target} to {owner!r} in machine {self.machine_name!r}: guest "
                    f"commands run as {user!r}, not root (smolvm {self._smolvm.version_text} "
                    f"has no option to choose another), so what they unpack belongs to "
                    f"{user!r}",
                    running_as=user,
                    wanted=owner,
                    version=self._smolvm.version,
                )
            try:
                uid, gid = (0, 0) if (owner or user) == "root" else self._user_ids(owner or user)
            except _ProbeError as exc:
                raise (exc.result.error or exc) from None
            # The archive carries the final owner's ids: root unpacks them as they are, and a
            # user unpacking its own files gives them to itself either way.
            unpack = ["/bin/sh", "-c", 'mkdir -p "$1" && exec tar -x -p -f - -C "$1"', "sh",
                      target]  # fmt: skip
            tar = self._tar(user, unpack, kept=kept)
            status, said, left_out, unread = self._send_tree(tar, src, uid, gid)
            if not self._tar_refused(tar):
                break
            kept = False  # nothing was unpacked: again, as the machine now needs
        if unread:
            raise unread[0]
        if left_out:
            log.warning("copy of %s: left out (not a file, directory or link): %s",
                        src, ", ".join(left_out))  # fmt: skip
        self._tar_done(tar.argv, status, said, f"copy of {src} to {target}")

    def _send_tree(
        self, tar: _Tar, src: str, uid: int, gid: int
    ) -> tuple[int, str, list[str], list[OSError]]:
        """Run `tar` with `src` packed into its stdin: its status and stderr, what was left
        out, and the host's read errors."""
        left_out: list[str] = []
        unread: list[OSError] = []

        def feed(pipe: IO[bytes]) -> None:
            try:
                _pack(src, pipe, uid, gid, left_out)
            except BrokenPipeError:
                raise  # the guest's tar stopped reading: its status says why
            except OSError as exc:
                # The host's side (a file that cannot be read): said as it is, once the
                # guest's tar has seen the archive end short. Not smolvm's failure to start.
                unread.append(exc)

        with _runnable(tar.argv[0]):
            status, said = sv.run_streamed(
                tar.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, feed=feed,
                capture_stderr=True, marks=tar.marks,
            )  # fmt: skip
        return status, said, left_out, unread

    def _receive_tree(
        self, tar: _Tar, target: str
    ) -> tuple[int, str, list[str], list[tarfile.TarError], list[OSError]]:
        """Run `tar`, its stdout unpacked into `target`: its status and stderr, what was left
        out, and the archive's and the host's errors."""
        import tarfile

        left_out: list[str] = []
        unreadable: list[tarfile.TarError] = []
        unwritten: list[OSError] = []

        def drain(pipe: IO[bytes]) -> None:
            try:
                _unpack(pipe, target, left_out)
            except tarfile.TarError as exc:
                # An archive cut short: most often the guest's tar failed, and its status says
                # why.
                unreadable.append(exc)
            except OSError as exc:
                # The host's side (no room, …), said as it is: not smolvm's failure to start.
                unwritten.append(exc)
            while pipe.read(65536):  # to the end, for the guest's tar to finish
                pass

        with _runnable(tar.argv[0]):
            status, said = sv.run_streamed(
                tar.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, drain=drain,
                capture_stderr=True, marks=tar.marks,
            )  # fmt: skip
        return status, said, left_out, unreadable, unwritten

    def _download_tree(self, src: str, target: str) -> None:
        import shutil

        made = not os.path.lexists(target)
        if not made and (os.path.islink(target) or not os.path.isdir(target)):
            raise InvalidInputError(
                f"cannot overwrite {target!r}, not a directory, with directory {src} of "
                f"machine {self.machine_name!r}"
            )
        if made:
            os.mkdir(target, 0o700)
        try:
            kept = True
            while True:
                user, kept = self._tree_user(kept=kept)
                tar = self._tar(user, ["tar", "-c", "-f", "-", "-C", src, "."], kept=kept)
                status, said, left_out, unreadable, unwritten = self._receive_tree(tar, target)
                if not self._tar_refused(tar):
                    break
                kept = False  # no archive came: again, as the machine now needs
            self._tar_done(tar.argv, status, said, f"copy of {src}")
            if unwritten:
                raise unwritten[0]
            if unreadable:
                raise InvalidInputError(
                    f"copy of {src} from machine {self.machine_name!r}: the guest's archive "
                    f"cannot be read: {unreadable[0]}"
                )
        except BaseException:
            if made:
                shutil.rmtree(target, ignore_errors=True)
            raise
        if left_out:
            log.warning("copy of %s: left out (not a file, directory or link): %s",
                        src, ", ".join(left_out))  # fmt: skip


class _Tar(NamedTuple):
    argv: list[str]
    marks: sv.Marks | None
    found: _Kept | None  # the kept answer it runs on, behind the check


class _ProbeError(BottleError):
    """Asking the guest who it runs commands as failed; `result` says how."""

    def __init__(self, result: ExecResult, machine: str, command: Sequence[str]) -> None:
        if result.error is not None:
            message = str(result.error)
        else:
            detail = _last(result.stderr) or _last(result.stdout)
            message = (
                f"cannot learn who guest commands run as in machine {machine!r}: "
                f"`{shlex.join(command)}` exited with status {result.returncode}"
                + (f": {detail}" if detail else "")
            )
        super().__init__(message)
        self.result = result


@contextlib.contextmanager
def _step(
    step: str, machine: str, progress: Callable[[Progress], None] | None
) -> Iterator[Callable[[str], None]]:
    began = time.monotonic()
    log.info("%s machine %r", step, machine, extra=PROGRESS_STEP)

    def report(line: str | None = None, done: bool = False, redrawn: bool = False) -> None:
        if progress is not None:
            elapsed = time.monotonic() - began
            progress(Progress(step, machine, elapsed, line, done, redrawn=redrawn))

    def on_line(line: str) -> None:
        redrawn = bool(getattr(line, "redrawn", False))
        if not redrawn:
            # Each redraw of a progress bar is not a line of the log (the last state, which
            # smolvm ends with a newline, is).
            log.debug("%s machine %r: %s", step, machine, line, extra=PROGRESS_LINE)
        report(str(line), redrawn=redrawn)

    report()
    yield on_line
    log.info(
        "%s machine %r: done in %.1f s",
        step,
        machine,
        time.monotonic() - began,
        extra=PROGRESS_STEP,
    )
    report(done=True)


@contextlib.contextmanager
def _runnable(smolvm: str) -> Iterator[None]:
    """smolvm found and checked earlier, yet not runnable now: the precise error."""
    try:
        yield
    except PermissionError:
        raise SmolvmNotExecutableError(
            f"smolvm at {smolvm} is not executable", filename=smolvm
        ) from None
    except FileNotFoundError:
        raise SmolvmNotFoundError(f"smolvm at {smolvm} disappeared", filename=smolvm) from None


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _check_install(spec: LaunchSpec, policy: NetworkPolicy) -> None:
    """Refuse `install_agent` where it cannot work, before anything runs."""
    provider = get_provider(spec.agent_provider)
    if not provider.install_command:
        raise InvalidInputError(
            Message(
                "agent provider {provider!r} has no install command, so {install} cannot "
                "install it: use an image that has {command!r}",
                provider=provider.name,
                install=Param("install_agent", True),
                command=provider.command,
            )
        )
    # smolvm fixes a machine's allow-list when it creates it (`machine update` can only clear
    # it, on a stopped machine; src/cli/machine.rs UpdateCmd), so there is no opening the
    # registry for the install alone: the user says whether it may stay open.
    missing = [host for host in provider.install_hosts if not policy.reaches(host)]
    if missing and not policy.mode.restricted:
        raise InvalidInputError(
            Message(
                "{install} fetches {package} from {hosts}, and the machine has no network: "
                "turn it on ({open}), or use an image that has {command!r}",
                install=Param("install_agent", True),
                package=provider.install_command[-1],
                hosts=", ".join(missing),
                open=Param("network", "open"),
                command=provider.command,
            )
        )
    if missing:
        raise InvalidInputError(
            Message(
                "{install} fetches {package} from {hosts}, which {network} does not allow. "
                "smolvm fixes a machine's allow-list when it creates it, so that would stay "
                "reachable for the machine's whole life, not only for the install: accept "
                "that with {allow}, use {open}, or use an image that has {command!r}",
                install=Param("install_agent", True),
                package=provider.install_command[-1],
                hosts=", ".join(missing),
                network=Param("network", policy.mode.value),
                allow=Param("allow_hosts", missing),
                open=Param("network", "open"),
                command=provider.command,
            )
        )
    if policy.mode.restricted:
        log.info(
            "machine %r: %s, allowed for the agent's install, stays reachable for the "
            "machine's whole life (smolvm fixes the allow-list at create)",
            spec.machine_name,
            ", ".join(provider.install_hosts),
        )


def _host_path(path: object, what: str = "host path") -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"{what} must be a path (str or os.PathLike), not "
                                f"{type(path).__name__}")  # fmt: skip
    return check.no_nul(os.fspath(path), what)


def _host_source(path: object) -> str:
    """A host path to copy from: an existing directory or readable regular file."""
    text = _host_path(path)
    if os.path.isdir(text):
        return text
    return check.host_file(text, "host path")


def _pack(root: str, pipe: IO[bytes], uid: int, gid: int, left_out: list[str]) -> None:
    """Write the tree under `root` to `pipe` as one tar stream, every member owned by uid:gid
    (by number: names could mean other ids in the guest)."""
    import tarfile

    def member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            left_out.append(info.name)
            return None
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    # GNU's format: long names as GNU tar and BusyBox's both read them.
    with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        tar.add(os.path.realpath(root), arcname=".", filter=member)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _parts(name: str) -> list[str]:
    """An archive member's path as components, refused if it could leave the target."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInputError(f"the guest's archive names {name!r}, outside the copy")
    return parts


def _walk(root_fd: int, parts: list[str], *, make: bool) -> int:
    """A descriptor of the directory `parts` under `root_fd`, reached one component at a time
    without following a link (made, 0700 until its own mode comes, when `make`)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                os.mkdir(part, 0o700, dir_fd=fd)
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError as exc:
        os.close(fd)
        # ELOOP, ENOTDIR: a link or a file where the archive has a directory.
        raise InvalidInputError(
            f"cannot unpack the guest's {'/'.join(parts)!r} there: {exc.strerror}"
        ) from None
    return fd


def _clear(dir_fd: int, name: str) -> None:
    """Remove what stands at `name` (not a directory), as tar does before it unpacks a file:
    the new one is a new file, never written through a link already there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError):
        raise InvalidInputError(f"cannot overwrite directory {name!r} with a file") from None


def _unpack(stream: IO[bytes], root: str, left_out: list[str]) -> None:
    """Unpack a tar stream from the guest into the directory `root`, never outside it: every
    path is walked one component at a time without following links (the archive's links are
    made as links, and nothing goes through one), and `..` is refused. Permission bits and
    modification times are kept, set-user-ID and set-group-ID dropped; a directory's mode is
    set once its contents are in (a read-only one must be written into first)."""
    import tarfile

    root_fd = os.open(root, _DIR_FLAGS)
    dirs: list[tuple[list[str], int, float]] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                parts = _parts(member.name)
                if member.isdir():
                    os.close(_walk(root_fd, parts, make=True))
                    dirs.append((parts, member.mode, member.mtime))
                    continue
                if not parts:
                    raise InvalidInputError(f"the guest's archive names {member.name!r}")
                parent = _walk(root_fd, parts[:-1], make=True)
                leaf = parts[-1]
                try:
                    if member.isreg():
                        _clear(parent, leaf)
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        fd = os.open(leaf, flags, 0o600, dir_fd=parent)
                        try:
                            data = tar.extractfile(member)
                            assert data is not None
                            while chunk := data.read(1 << 16):
                                _write_all(fd, chunk)
                            os.fchmod(fd, member.mode & 0o777)
                            os.utime(fd, (member.mtime, member.mtime))
                        finally:
                            os.close(fd)
                    elif member.issym():
                        _clear(parent, leaf)
                        os.symlink(member.linkname, leaf, dir_fd=parent)
                    elif member.islnk():
                        to = _parts(member.linkname)
                        there = _walk(root_fd, to[:-1], make=False)
                        try:
                            _clear(parent, leaf)
                            os.link(to[-1], leaf, src_dir_fd=there, dst_dir_fd=parent,
                                    follow_symlinks=False)  # fmt: skip
                        finally:
                            os.close(there)
                    else:
                        left_out.append(member.name)
                finally:
                    os.close(parent)
        for parts, mode, mtime in reversed(dirs):
            fd = _walk(root_fd, parts, make=False)
            try:
                os.fchmod(fd, mode & 0o1777)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


# `bottle shell`: the user's login shell from the guest's passwd (USER is set by the `env`
# prefix), unless it refuses logins or cannot be run; exec'd as itself, so not a login shell.
_SHELL = """\
shell=
while IFS=: read -r name _ _ _ _ _ login; do
    if [ "$name" = "$USER" ]; then shell=$login; break; fi
done < /etc/passwd
case $shell in
    '' | */nologin | */false) shell=/bin/sh ;;
esac
[ -x "$shell" ] || shell=/bin/sh
SHELL=$shell
export SHELL
exec "$shell"
"""

class _Handover:
    """What `launch` undoes for its machine (stop, delete), one step at a time, each reported
    as progress, until a detached session takes it over (`taken`: that session's name); the
    session's holder then does it when the agent exits, and the launch's own exit leaves the
    machine running.

    A step that fails is logged, and the next one still runs. A machine found gone (removed
    meanwhile, say by `bottle rm -f` from another terminal) ends the teardown: nothing is left
    to undo, and nothing failed. An interrupt (Ctrl-C) during a
    step gives up the teardown: smolvm's call is cut short (`run_captured` kills it), the
    steps not yet run are skipped, and `TeardownInterrupted` says what is left behind. Any
    other interrupt (the CLI's SystemExit on SIGTERM or SIGHUP) cuts the step short and the
    teardown goes on: nobody may be there to be told what was left.
    """

    def __init__(
        self,
        machine: str,
        smolvm: sv.Smolvm,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.machine = machine
        self.smolvm = smolvm
        self.progress = progress
        self.taken: str | None = None
        self.given_up = False
        self.gone = False

    def undo(self, step: str, action: Callable[[str], None], what: str) -> None:
        if self.taken is not None:
            log.info(
                "machine %r: %s left to detached session %r", self.machine, what, self.taken
            )
            return
        if self.given_up or self.gone:
            return
        try:
            with _step(step, self.machine, self.progress):
                action(self.machine)
        except KeyboardInterrupt as exc:
            self.given_up = True
            log.warning(
                "teardown interrupted while %s machine %r: it is left behind",
                step,
                self.machine,
                extra=RETURNED_ERROR,
            )
            raise TeardownInterrupted(
                f"teardown of machine {self.machine!r} interrupted while {step} it: the "
                f"machine is left behind; remove it with "
                f"SmolmachinesBottleBackend().remove_machine({self.machine!r}, force=True)",
                machine=self.machine,
                step=step,
            ) from exc
        except MachineNotFoundError:
            self.gone = True
            log.info("teardown: machine %r is gone already", self.machine)
        except Exception as exc:
            log.error("teardown: %s of machine %r failed: %s", what, self.machine, exc)

    def plan(self) -> dict[str, Any]:
        """The teardown as data for the session's holder: smolvm's path, the steps in order."""
        return {"machine": self.machine, "smolvm": self.smolvm.path, "steps": ["stop", "delete"]}


class SmolmachinesBottleBackend(BottleBackend):
    """Launches smolvm machines: create → start → provision → yield → stop → delete."""

    name = "smolmachines"

    def __init__(
        self, *, smolvm: sv.Smolvm | None = None, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self.smolvm = _smolvm(smolvm)
        self.retry = _retry_policy(retry)

    def __repr__(self) -> str:
        return f"SmolmachinesBottleBackend(smolvm={self.smolvm!r})"

    @contextlib.contextmanager
    def launch(
        self, spec: LaunchSpec, *, progress: Callable[[Progress], None] | None = None
    ) -> Iterator[SmolmachinesBottle]:
        """Bring a machine up for `spec`, yield its bottle, and tear down what we created.

        Everything is checked before the first smolvm call. Each undo is registered the moment
        its step succeeds; teardown runs on any exit (KeyboardInterrupt included), and a
        teardown failure is logged without hiding the original error. A machine that already
        exists is refused with `MachineExistsError` and never stopped or deleted. Each long
        step (creating, starting, provisioning, and on the way down stopping and deleting) is
        logged and, when given, reported to `progress` as it begins, for every line smolvm
        prints meanwhile, and as it ends. On smolvm 1.8.0 and later the machine is labelled as
        bottle's, with its network policy (see `list_machines`).

        An interrupt (KeyboardInterrupt) during the teardown gives it up where it is: the
        smolvm call running is stopped, the steps after it are skipped, and
        `TeardownInterrupted` (a KeyboardInterrupt) names the machine left behind.
        """
        user = _launch_spec(spec).agent_user
        if progress is not None and not callable(progress):
            raise InvalidInputError(
                f"progress must be a callable or None, not {type(progress).__name__}"
            )
        home = home_for(user)
        if spec.image is None and user != "root":
            raise InvalidInputError(
                Message(
                    "a machine without an image is a bare VM whose only user is root, so the "
                    "agent cannot run as {user!r}: give an image whose USER is {user!r} (or "
                    "root, with {user!r} in it) ({image}=IMAGE), or run the agent as root "
                    "({root})",
                    user=user,
                    image=Param("image"),
                    root=Param("agent_user", "root"),
                )
            )
        policy = self.network_policy(spec)
        if spec.install_agent:
            _check_install(spec, policy)
        prompt_src = None
        guest_prompt = None
        if spec.prompt_file is not None:
            prompt_src = check.host_file(spec.prompt_file, "prompt file")
            guest_prompt = spec.prompt_guest_path or f"{home}/.bottle/prompt.md"

        def create_args(labels: Mapping[str, str] | None = None) -> list[str]:
            return sv.create_args(
                spec.machine_name,
                image=spec.image,
                cpus=spec.cpus,
                memory_mib=spec.memory_mib,
                network=policy.mode is NetworkMode.OPEN,
                allow_hosts=policy.allow_hosts,
                allow_cidrs=policy.allow_cidrs,
                labels=labels,
            )

        create = create_args()  # checks its values before any smolvm call
        bottle = SmolmachinesBottle.from_spec(
            spec, prompt_path=guest_prompt, smolvm=self.smolvm, retry=self.retry
        )
        name = spec.machine_name
        smolvm = self.smolvm
        if smolvm.state(name) is not None:
            raise MachineExistsError(
                f"machine {name!r} already exists; launch creates its own machine and leaves "
                "existing ones alone (pick another name, or use the agent command)",
                machine=name,
            )
        if smolvm.version >= sv.LABELS_SINCE:
            create = create_args(_labels(policy))
        if policy.mode.restricted:
            log.info("machine %r: %s", name, policy.describe())
        handover = _Handover(name, smolvm, progress)
        with ExitStack() as stack:
            # Registered before the create, so that an interrupt at any point from here on
            # removes what it made: the name was free a moment ago, so whatever stands under it
            # is this create's, unless smolvm said the name was taken.
            create_done: list[bool] = []  # [False]: someone else's machine; [True]: ours
            stack.callback(self._undo_create, name, create_done, handover)
            try:
                with _step("creating", name, progress) as on_line:
                    smolvm.run(
                        create, machine=name, timeout=smolvm.timeouts.create, on_line=on_line
                    )
            except MachineExistsError:
                create_done.append(False)  # created since our check: not ours to touch
                raise
            create_done.append(True)
            # A start that fails or times out is undone by the delete (which stops first).
            with _step("starting", name, progress) as on_line:
                smolvm.start(name, on_line=on_line)
            bottle._up_since = time.monotonic()  # the machine's age, for the retry policy
            stack.callback(handover.undo, "stopping", smolvm.stop, "stop")
            stack.enter_context(bottle)
            bottle._handover = handover
            with _step("provisioning", name, progress):
                self._provision(bottle, prompt_src, guest_prompt)
            if spec.install_agent:
                with _step("installing", name, progress):
                    bottle.install_agent()
            yield bottle

    def network_policy(self, spec: LaunchSpec) -> NetworkPolicy:
        """The network `launch` would create `spec`'s machine with (`bottle.network.plan`).

        Asks smolvm for its version when the spec has an allow-list and a registry image
        (the image pull's hosts depend on it).

        Raises:
            InvalidInputError: a combination that cannot work (off, or CIDRs only, with a
                registry image; an allow-list with nothing in it).
        """
        provider = get_provider(_launch_spec(spec).agent_provider)
        registry = spec.image is not None and sv.is_registry_image(spec.image)
        version = (0, 0, 0)
        mode = spec.network_mode
        if registry and mode is not None and mode.restricted:
            version = self.smolvm.version
        return plan(
            mode,
            image=spec.image,
            registry=registry,
            provider_name=provider.name,
            provider_hosts=provider.egress_hosts,
            allow_hosts=spec.allow_hosts,
            allow_cidrs=spec.allow_cidrs,
            smolvm_version=version,
        )

    def _provision(
        self, bottle: SmolmachinesBottle, prompt_src: str | None, guest_prompt: str | None
    ) -> None:
        user = bottle.agent_user
        dirs = []
        if guest_prompt is not None:
            dirs.append(posixpath.dirname(guest_prompt))
        if bottle.agent_workdir != home_for(user):
            dirs.append(bottle.agent_workdir)
        # As the agent's user, so the directories end up owned by it.
        dirs = [d for d in dirs if d != "/"]
        if dirs:
            quoted = " ".join(shlex.quote(d) for d in dirs)
            bottle.exec(f"mkdir -p -- {quoted}", user=user).check(
                f"creating guest directories in machine {bottle.name!r}"
            )
        if prompt_src is not None and guest_prompt is not None:
            try:
                bottle.cp_in(prompt_src, guest_prompt, owner=user)
            except GuestUserError as exc:
                # smolvm 1.6.0 to 1.8.x on an image whose USER is not root: no cp --uid and
                # no root to chown. The agent only reads its prompt, so a root-owned copy it
                # can read will do.
                bottle.cp_in(prompt_src, guest_prompt)
                readable = bottle.exec(f"test -r {shlex.quote(guest_prompt)}", user=user)
                if not readable.ok:
                    raise exc from None
                log.info("prompt file %s stays owned by root, readable by %r: %s",
                         guest_prompt, user, exc)  # fmt: skip

    def _undo_create(self, name: str, done: list[bool], handover: _Handover) -> None:
        if not done:
            # Failed or interrupted half-way (or just after): remove whatever it left.
            if self._leftover(name):
                handover.undo("deleting", self.smolvm.delete, "delete")
        elif done[0]:
            handover.undo("deleting", self.smolvm.delete, "delete")

    def _leftover(self, name: str) -> bool:
        try:
            return self.smolvm.state(name) is not None
        except Exception as exc:
            log.error("teardown: could not remove half-created machine %r: %s", name, exc)
            return False

    # --- machines, whoever made them ---------------------------------------------------------

    def list_machines(self) -> list[MachineInfo]:
        """Every machine smolvm has (`smolvm machine ls`), by name; those a bottle launch
        made are marked (`launched_by_bottle`) and carry their network policy."""
        return sorted((_machine_info(m) for m in self.smolvm.ls()), key=lambda m: m.name)

    def stop_machine(
        self, name: str, *, progress: Callable[[Progress], None] | None = None
    ) -> None:
        """Stop a machine (one that is not running stays as it is).

        Raises:
            MachineNotFoundError: there is no such machine.
            SmolvmError: smolvm failed to stop it (`SmolvmTimeoutError` past `Timeouts.stop`).
        """
        name = check.machine_name(name)
        with _step("stopping", name, progress):
            self.smolvm.stop(name)

    def remove_machine(
        self,
        name: str,
        *,
        force: bool = False,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        """Delete a machine; one that is running (or may be: `unreachable`, `frozen`) only with
        `force`, which stops it first.

        Raises:
            MachineNotFoundError: there is no such machine.
            MachineRunningError: it is running and `force` is False (nothing is done).
            SmolvmError: smolvm failed to delete it.
        """
        name = check.machine_name(name)
        check.flag(force, "force")
        state = self.smolvm.state(name)
        if state is None:
            raise MachineNotFoundError(f"machine {name!r} does not exist", machine=name)
        if state in UP_STATES and not force:
            raise MachineRunningError(
                f"machine {name!r} is {state}: stop it first (stop_machine), or remove it "
                "anyway with force=True",
                machine=name,
                state=state,
            )
        with _step("deleting", name, progress):
            self.smolvm.delete(name)

    # --- a launch, planned -------------------------------------------------------------------

    def dry_run(
        self, spec: LaunchSpec, agent_argv: Sequence[str] = (), *, tty: bool = True
    ) -> list[PlannedCall]:
        """The smolvm commands `launch(spec)` and an agent session (`agent_argv`, `tty`) would
        run, in order, without running any of them.

        It runs the launch itself, every check included, against a stand-in for smolvm that
        only writes down what it is asked: nothing is created, started or run in a guest.
        smolvm is asked only what cannot change anything: its version, its `exec --help`, and
        the status of `spec`'s machine (a name that is taken is refused as `launch` refuses
        it). What a guest would answer is assumed: every command succeeds, and commands run as
        the agent's user (an image's USER decides that for real; each call whose answer was
        assumed says so in its `note`). Secret values never appear: they travel by name.
        """
        spec = _launch_spec(spec)
        check.argv(agent_argv)
        check.flag(tty, "tty")
        dry = _DryRunSmolvm(self.smolvm, spec)
        backend = SmolmachinesBottleBackend(smolvm=dry, retry=self.retry)
        with backend.launch(spec, progress=dry.on_progress) as bottle:
            dry.step = "session"
            # As `run_agent` does before the session: is the agent's command there?
            bottle._agent_missing({})
            check_call = dry.planned[-1]  # the check's own exec (after any `id` it needed)
            dry.planned[-1] = PlannedCall(
                check_call.step, check_call.argv, f"assumed: {bottle.agent_command!r} is there"
            )
            argv = bottle.agent_argv(agent_argv, tty=tty)
            note = ""
            if spec.image is not None and not dry.has_exec_user_option():
                note = (
                    f"as {spec.agent_user} if the image's USER is {spec.agent_user}; through "
                    f"`runuser -u {spec.agent_user} --` if it is root"
                )
            dry.planned.append(PlannedCall("session", tuple(argv), note))
        return list(dry.planned)


def _labels(policy: NetworkPolicy) -> dict[str, str]:
    labels = {LABEL_VERSION: __version__, LABEL_NETWORK: str(policy.mode)}
    if policy.allow_hosts:
        labels[LABEL_ALLOW_HOSTS] = ",".join(policy.allow_hosts)
    if policy.allow_cidrs:
        labels[LABEL_ALLOW_CIDRS] = ",".join(policy.allow_cidrs)
    return labels


def _machine_info(record: Mapping[str, object]) -> MachineInfo:
    """A machine from its `ls --json` record (src/cli/vm_common.rs machine_status_json)."""
    raw_labels = record.get("labels")
    labels = raw_labels if isinstance(raw_labels, dict) else {}

    def listed(key: str) -> tuple[str, ...]:
        return tuple(part for part in str(labels.get(key, "")).split(",") if part)

    ours = LABEL_VERSION in labels
    network: str | None
    if ours and LABEL_NETWORK in labels:
        network = str(labels[LABEL_NETWORK])
    elif isinstance(record.get("network"), bool):
        network = "on" if record["network"] else "off"
    else:
        network = None
    created = record.get("created_at")
    cpus, memory = record.get("cpus"), record.get("memory_mib")
    image = record.get("image")
    return MachineInfo(
        name=str(record.get("name", "")),
        state=str(record.get("state", "unknown")),
        image=str(image) if image else None,
        network=network,
        allow_hosts=listed(LABEL_ALLOW_HOSTS) if ours else (),
        allow_cidrs=listed(LABEL_ALLOW_CIDRS) if ours else (),
        created_at=float(created) if isinstance(created, (int, float)) else None,
        launched_by_bottle=ours,
        cpus=cpus if isinstance(cpus, int) else None,
        memory_mib=memory if isinstance(memory, int) else None,
    )


@dataclass(frozen=True)
class PlannedCall:
    """A smolvm command a launch would run (`dry_run`): the step it belongs to (`creating`,
    `starting`, `provisioning`, `session`, `stopping`, `deleting`), its argv (starting with
    `smolvm`), and what the dry run assumed to get there, if anything."""

    step: str
    argv: tuple[str, ...]
    note: str = ""


class _DryRunSmolvm(sv.Smolvm):
    """Writes down the smolvm calls a launch makes instead of making them; asks the real
    smolvm only what changes nothing (its version, `exec --help`, the name's status)."""

    # Its guests' answers are assumed: a real launch must never find them kept.
    keeps_guest_answers = False

    def __init__(self, real: sv.Smolvm, spec: LaunchSpec) -> None:
        super().__init__(timeouts=real.timeouts)
        self._real = real
        self._spec = spec
        self._state: str | None = None
        self._created = False
        self.step = ""
        self.planned: list[PlannedCall] = []

    @property
    def path(self) -> str:
        return self._real.path

    @property
    def version(self) -> tuple[int, int, int]:
        return self._real.version

    def has_exec_user_option(self) -> bool:
        return self._real.has_exec_user_option()

    def on_progress(self, event: Progress) -> None:
        if event.line is None and not event.done:
            self.step = event.step

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
        sub = args[1] if len(args) > 1 else ""
        if sub in ("status", "ls") and not self._created:
            return self._real.call(args, machine=machine, timeout=timeout)
        argv = ["smolvm", *args]
        out, note = "", ""
        if sub == "status":
            if self._state is None:
                return subprocess.CompletedProcess(argv, 1, "", ""), MachineNotFoundError(
                    f"machine {machine!r} does not exist", argv=argv, machine=machine
                )
            out = json.dumps({"name": machine, "state": self._state})
            return subprocess.CompletedProcess(argv, 0, out, ""), None
        if sub == "create":
            self._created, self._state = True, "created"
        elif sub == "start":
            self._state = "running"
        elif sub == "stop":
            self._state = "stopped" if self._state is not None else None
        elif sub == "delete":
            self._state = None
        elif sub == "exec" and "--" in args:
            out, note = self._answer(list(args[args.index("--") + 1 :]))
        elif sub == "cp":
            # The ids come from an `id` the dry run answered itself: say which they stand for.
            for i, word in enumerate(argv[:-1]):
                if word in ("--uid", "--gid"):
                    argv[i + 1] = word[2:].upper()
        self.planned.append(PlannedCall(self.step, tuple(argv), note))
        return subprocess.CompletedProcess(argv, 0, out, ""), None

    def _answer(self, command: list[str]) -> tuple[str, str]:
        """What the guest is assumed to print for a guest command, and the note saying so."""
        if command[:1] != ["id"]:
            return "", ""
        if command[1:2] == ["--"] and len(command) == 3:
            user = command[2]
            note = f"{user}'s uid and gid in the guest (UID and GID below)"
        else:
            user = self._spec.agent_user
            if self._spec.image is None:
                note = "who the guest runs commands as (a bare VM: root)"
            else:
                note = f"who the guest runs commands as: the image's USER (assumed: {user})"
        uid = 0 if user == "root" else 1000
        return f"uid={uid}({user}) gid={uid}({user})\n", note
