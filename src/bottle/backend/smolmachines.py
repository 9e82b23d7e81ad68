"""The smolmachines backend: bottles that are smolvm machines.

Who a guest command runs as is smolvm's choice, not ours (its `machine exec` in
src/cli/machine.rs, and the image user applied since commits 5bbffccf and 957bd755): root on a
bare VM; the image's USER on an image machine (for `-i`/`-t` since smolvm 1.3.0, for captured
exec since 1.6.0); no released smolvm can pick another. So a bottle learns once who its guest
commands run as (`id`, run in the guest), runs directly when that is the wanted user, switches
with `runuser -u USER --` only from root (never `-l`: a login PAM session can hang on a minimal
guest), uses smolvm's own `--user` where a newer smolvm offers it, and otherwise refuses with a
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
import logging
import math
import os
import posixpath
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from bottle import _validate as check
from bottle import smolvm as sv
from bottle.agent_provider import PromptMode, agent_args, get_provider
from bottle.backend import Bottle, BottleBackend, LaunchSpec, terminal
from bottle.errors import (
    BottleError,
    ConnectionLostError,
    GuestUserError,
    InvalidInputError,
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    Message,
    Param,
    SmolvmCommandError,
    SmolvmNotExecutableError,
    SmolvmNotFoundError,
)
from bottle.network import NetworkMode, NetworkPolicy, plan
from bottle.results import AgentResult, ExecResult, Progress, exit_status

if TYPE_CHECKING:
    from bottle.relay import Recording
    from bottle.sessions import Session

__all__ = [
    "DEFAULT_RETRY",
    "RetryPolicy",
    "SmolmachinesBottle",
    "SmolmachinesBottleBackend",
    "home_for",
]

log = logging.getLogger(__name__)

# Marks a log record whose failure is also handed back in a result (a status, not an
# exception): callers that only look at statuses still see why, and the bottle CLI, which
# raises the precise error from the result and prints it, drops these records.
RETURNED_ERROR = {"returned_error": True}
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
# Guest commands run as the image's USER for `-i`/`-t` since smolvm 1.3.0 (commit 5bbffccf) and
# for captured exec since 1.6.0 (957bd755); in between the two kinds can differ.
_INTERACTIVE_USER_SINCE = (1, 3, 0)
_CAPTURED_USER_SINCE = (1, 6, 0)
# `machine cp --uid/--gid` (src/cli/machine.rs, CpCmd) since smolvm 1.9.0.
_CP_OWNER_SINCE = (1, 9, 0)
_ID = re.compile(r"uid=(\d+)(?:\(([^)]*)\))?\s+gid=(\d+)")


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


def home_for(user: str) -> str:
    """The home directory bottle assumes for a guest user."""
    if user == "root":
        return "/root"
    return f"/home/{user}"


@dataclass(frozen=True)
class RetryPolicy:
    """When to run a captured guest command again.

    `attempts` counts every run (2 = one retry); `statuses` are the exit statuses that trigger
    a retry after `delay` seconds. The default retries once on 137: the hypervisor can SIGKILL a
    short exec while the VM is still coming up.
    """

    attempts: int = 2
    delay: float = 1.0
    statuses: frozenset[int] = frozenset({137})

    def __post_init__(self) -> None:
        check.count(self.attempts, "RetryPolicy attempts", minimum=1)
        delay = self.delay
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise InvalidInputError(
                f"RetryPolicy delay must be a number of seconds, not {type(delay).__name__}"
            )
        if not 0 <= delay < math.inf:  # NaN too
            raise InvalidInputError(
                f"RetryPolicy delay must be 0 or more seconds (and finite), not {delay}"
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
        self._ids: dict[str, tuple[int, int]] = {}
        # Set by `launch`: the machine's teardown, which a detached session can take over.
        self._handover: _Handover | None = None

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
        pairs = [f"HOME={home_for(user)}", f"USER={user}"]
        return pairs + [f"{key}={value}" for key, value in self.guest_env.items()]

    # --- who guest commands run as ------------------------------------------------------

    def _kinds_differ(self) -> bool:
        return _INTERACTIVE_USER_SINCE <= self._smolvm.version < _CAPTURED_USER_SINCE

    def _guest_id(self, command: Sequence[str], *, interactive: bool) -> re.Match[str]:
        # Often the bottle's first exec, so it gets the retry policy: a short exec can be
        # SIGKILLed while the VM is still coming up.
        args = sv.exec_args(self.machine_name, command, interactive=interactive)
        result = self._captured(args, None)
        m = _ID.search(result.stdout)
        if result.error is not None or result.returncode != 0 or m is None:
            raise _ProbeError(result, self.machine_name, command)
        return m

    def guest_user(self, *, interactive: bool = False) -> str:
        """Who guest commands run as on this machine: learnt once (`id` in the guest), cached.

        `interactive` asks about `-i`/`-t` sessions, which smolvm 1.3.0 to 1.5.x runs as the
        image's USER while captured commands still run as root. A user without a name in the
        guest's passwd is given as its uid.
        """
        key = interactive and self._kinds_differ()
        if key not in self._guest_users:
            m = self._guest_id(["id"], interactive=key)
            self._guest_users[key] = m.group(2) or m.group(1)
            log.info(
                "machine %r runs %s guest commands as %r (smolvm %s)",
                self.machine_name,
                "interactive" if key else "captured" if self._kinds_differ() else "all",
                self._guest_users[key],
                self._smolvm.version_text,
            )
        return self._guest_users[key]

    def _user_ids(self, user: str) -> tuple[int, int]:
        if user not in self._ids:
            m = self._guest_id(["id", "--", user], interactive=False)
            self._ids[user] = int(m.group(1)), int(m.group(3))
        return self._ids[user]

    def _as_user(self, user: str, *, interactive: bool) -> tuple[list[str], str | None]:
        """The guest command's prefix to run as `user`, and smolvm's `--user` value if used."""
        assignments = ["env", *self.env_assignments(user)]
        if self._smolvm.has_exec_user_option():
            return assignments, user
        running_as = self.guest_user(interactive=interactive)
        if running_as == user:
            return assignments, None
        if running_as == "root":
            return ["runuser", "-u", user, "--", *assignments], None
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
        guest, user = self._as_user(self.agent_user, interactive=True)
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

    def _not_running(self) -> BottleError | None:
        """Why the machine cannot take a session now, or None when it is running."""
        try:
            state = self._smolvm.state(self.machine_name)
        except SmolvmCommandError as exc:
            return exc
        if state is None:
            return MachineNotFoundError(
                f"machine {self.machine_name!r} does not exist", machine=self.machine_name
            )
        if state != "running":
            return MachineNotRunningError(
                f"machine {self.machine_name!r} is not running (state: {state}); "
                f"start it with: smolvm machine start -n {self.machine_name}",
                machine=self.machine_name,
            )
        return None

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
        failures. `run_agent` gives the same status with the precise error.

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
        appears as it comes, uncapped. The result's `error` is `MachineNotFoundError` /
        `MachineNotRunningError` / `GuestUserError` when no session could start (status 1,
        nothing run), and `ConnectionLostError` when smolvm exited 1 and the machine is no
        longer running.

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
        refused = self._not_running()
        full: list[str] = []
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
            log.error(
                "agent session in machine %r not started: %s",
                self.machine_name,
                refused,
                extra=RETURNED_ERROR,
            )
            return AgentResult(1, refused)
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
        status = exit_status(status)
        log.info("agent session in machine %r ended with status %d", self.machine_name, status)
        if status == 1:
            # Exit 1 is either the agent's own status or smolvm's error; the error text went to
            # the user's terminal, so ask smolvm whether the machine survived.
            try:
                state = self._smolvm.state(self.machine_name)
            except Exception:  # the probe is best effort; the status stands
                state = "running"
            if state != "running":
                lost = ConnectionLostError(
                    f"connection to the VM lost: machine {self.machine_name!r} is "
                    f"{state or 'gone'} after the agent session ended",
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

    def exec(self, script: str, *, user: str = "node", workdir: str | None = None) -> ExecResult:
        """Run `/bin/sh -c SCRIPT` as `user` (in `workdir`, smolvm's `-w`, when given); capture
        text output (bad bytes replaced). Without `workdir` it runs where smolvm puts it (the
        image's WORKDIR, else `/`).

        Returns the last `ExecResult`, as the replaced class did, even when smolvm failed (its
        `Error:` line is in `stderr`, the precise error in `error`) or every attempt of the
        retry policy ended with a retryable status (`retry_exhausted`, earlier attempts in
        `retried`). `result.check()` raises the precise error. Each retry is logged.
        """
        self._ensure_open()
        check.no_nul(script, "script")
        check.user_name(user)
        if workdir is not None:
            check.guest_path(workdir, Param("workdir"))
        try:
            prefix, option = self._as_user(user, interactive=False)
        except GuestUserError as exc:
            log.warning("exec in machine %r: %s", self.machine_name, exc, extra=RETURNED_ERROR)
            return ExecResult(1, "", f"bottle: {exc}\n", error=exc)
        except _ProbeError as exc:
            return exc.result
        args = sv.exec_args(
            self.machine_name,
            [*prefix, "/bin/sh", "-c", script],
            env_names=self.secret_names,
            workdir=workdir,
            user=option,
        )
        return self._captured(args, self.child_env())

    def _captured(self, args: list[str], env: dict[str, str] | None) -> ExecResult:
        """Run a captured exec under the retry policy; the last result, failures included."""
        policy = self.retry
        results: list[ExecResult] = []
        for attempt in range(1, policy.attempts + 1):
            proc, error = self._smolvm.call(args, env=env, machine=self.machine_name, guest=True)
            status = exit_status(proc.returncode)
            retryable = error is None and status in policy.statuses
            result = ExecResult(
                status,
                proc.stdout,
                proc.stderr,
                error=error,
                retried=tuple(results),
                retry_exhausted=retryable and attempt == policy.attempts,
            )
            if error is not None:
                log.warning(
                    "exec in machine %r: %s", self.machine_name, error, extra=RETURNED_ERROR
                )
            if not retryable:
                return result
            results.append(result)
            if attempt < policy.attempts:
                log.warning(
                    "exec in machine %r exited with status %d (attempt %d of %d); "
                    "retrying in %.1f s",
                    self.machine_name,
                    status,
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
            with tempfile.TemporaryDirectory(prefix="bottle-cp-") as tmp:
                link = os.path.join(tmp, "file")
                os.symlink(os.path.abspath(src), link)
                self._smolvm.cp_in(link, self.machine_name, container_path, uid=uid, gid=gid)
        else:
            self._smolvm.cp_in(src, self.machine_name, container_path, uid=uid, gid=gid)
        if chown and owner is not None:
            script = f"chown -- {shlex.quote(owner)}: {shlex.quote(container_path)}"
            self.exec(script, user="root").check(f"chown of {container_path}")


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
    log.info("%s machine %r", step, machine)

    def report(line: str | None = None, done: bool = False) -> None:
        if progress is not None:
            progress(Progress(step, machine, time.monotonic() - began, line, done))

    def on_line(line: str) -> None:
        log.debug("%s machine %r: %s", step, machine, line)
        report(line)

    report()
    yield on_line
    log.info("%s machine %r: done in %.1f s", step, machine, time.monotonic() - began)
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


class _Handover:
    """What `launch` undoes for its machine (stop, delete), until a detached session takes
    it over (`taken`: that session's name); the session's holder then does it when the agent
    exits, and the launch's own exit leaves the machine running."""

    def __init__(self, machine: str, smolvm: sv.Smolvm) -> None:
        self.machine = machine
        self.smolvm = smolvm
        self.taken: str | None = None

    def undo(self, what: str, step: Callable[[str], None]) -> None:
        if self.taken is not None:
            log.info(
                "machine %r: %s left to detached session %r", self.machine, what, self.taken
            )
            return
        SmolmachinesBottleBackend._undo(what, step, self.machine)

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
        step (creating, starting, provisioning) is logged and, when given, reported to
        `progress` as it begins, for every line smolvm prints meanwhile, and as it ends.
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
        prompt_src = None
        guest_prompt = None
        if spec.prompt_file is not None:
            prompt_src = check.host_file(spec.prompt_file, "prompt file")
            guest_prompt = spec.prompt_guest_path or f"{home}/.bottle/prompt.md"
        create = sv.create_args(
            spec.machine_name,
            image=spec.image,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            network=policy.mode is NetworkMode.OPEN,
            allow_hosts=policy.allow_hosts,
            allow_cidrs=policy.allow_cidrs,
        )
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
        if policy.mode.restricted:
            log.info("machine %r: %s", name, policy.describe())
        handover = _Handover(name, smolvm)
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
            stack.callback(handover.undo, "stop", smolvm.stop)
            stack.enter_context(bottle)
            bottle._handover = handover
            with _step("provisioning", name, progress):
                self._provision(bottle, prompt_src, guest_prompt)
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
            self._remove_leftover(name)
        elif done[0]:
            handover.undo("delete", self.smolvm.delete)

    def _remove_leftover(self, name: str) -> None:
        try:
            if self.smolvm.state(name) is not None:
                self.smolvm.delete(name)
        except Exception as exc:
            log.error("teardown: could not remove half-created machine %r: %s", name, exc)

    @staticmethod
    def _undo(what: str, step: Callable[[str], None], name: str) -> None:
        try:
            step(name)
        except Exception as exc:
            log.error("teardown: %s of machine %r failed: %s", what, name, exc)
