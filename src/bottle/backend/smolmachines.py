"""The smolmachines backend: bottles that are smolvm machines.

Guest commands switch user with `runuser -u USER --` (never `-l`: a login PAM session can hang
on a minimal guest) and set `HOME`/`USER` and the bottle's env with `env K=V…`.

Secrets (`secret_env`) never appear on a command line: the host `smolvm` process gets them in
its environment and is told their *names* only (`exec -e KEY`, which smolvm fills from its own
environment). In the guest they are in the environment of the process smolvm starts, and
`runuser` (without `-l`) and `env` pass inherited variables through, so neither needs them on
its argv either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from bottle import smolvm as sv
from bottle.agent_provider import PromptMode, get_provider, prompt_args
from bottle.backend import Bottle, BottleBackend, ExecResult, LaunchSpec, terminal
from bottle.backend import _validate as check
from bottle.errors import (
    ConnectionLostError,
    InvalidInputError,
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    RetryExhaustedError,
    SmolvmNotExecutableError,
    SmolvmNotFoundError,
)

__all__ = [
    "DEFAULT_RETRY",
    "RetryPolicy",
    "SmolmachinesBottle",
    "SmolmachinesBottleBackend",
    "home_for",
]

log = logging.getLogger(__name__)

TRAMPOLINE_NAME = "bottle-agent"
# runuser resets these for the target user (and we set HOME/USER explicitly), so a secret of
# one of these names would silently be replaced.
_RESERVED_SECRET_NAMES = frozenset({"HOME", "USER", "LOGNAME", "SHELL"})


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
        if self.attempts < 1:
            raise InvalidInputError(f"retry attempts must be at least 1, not {self.attempts}")
        if self.delay < 0:
            raise InvalidInputError(f"retry delay must not be negative, not {self.delay}")
        object.__setattr__(self, "statuses", frozenset(self.statuses))


DEFAULT_RETRY = RetryPolicy()


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
        agent_workdir: str = "/home/node",
        agent_user: str = "node",
        smolvm: sv.Smolvm | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.machine_name = check.machine_name(machine_name)
        if prompt_path is not None:
            check.guest_path(prompt_path, "prompt path")
        self.prompt_path = prompt_path
        self.guest_env = dict(check.env_mapping(guest_env, "guest_env"))
        secrets = check.env_mapping(secret_env, "secret_env")
        for key in secrets:
            if key in _RESERVED_SECRET_NAMES:
                raise InvalidInputError(
                    f"secret_env name {key!r} is reserved: runuser and bottle set it in the guest"
                )
            if key in self.guest_env:
                raise InvalidInputError(f"{key!r} is in both guest_env and secret_env")
        self._secret_env = secrets
        check.no_nul(agent_command, "agent command")
        if not agent_command:
            raise InvalidInputError("agent command is empty")
        self.agent_command = agent_command
        self.agent_prompt_mode = PromptMode.parse(agent_prompt_mode)
        self.agent_provider = get_provider(agent_provider_template)
        self.terminal_title = terminal.sanitize_title(terminal_title)
        self.terminal_color = terminal.validate_color(terminal_color) if terminal_color else ""
        self.agent_workdir = check.guest_path(agent_workdir, "agent workdir")
        self.agent_user = check.user_name(agent_user)
        self.retry = retry
        self._smolvm = smolvm if smolvm is not None else sv.Smolvm()

    def __repr__(self) -> str:
        secrets = f", secret_env=<{len(self._secret_env)} hidden>" if self._secret_env else ""
        return f"SmolmachinesBottle({self.machine_name!r}{secrets})"

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

    def _as_user(self, user: str) -> list[str]:
        return ["runuser", "-u", user, "--", "env", *self.env_assignments(user)]

    def agent_argv(self, argv: Sequence[str], *, tty: bool = True) -> list[str]:
        """The full smolvm command line of an agent run, starting with the literal `smolvm`."""
        args = check.argv(argv)
        guest = self._as_user(self.agent_user)
        if self.agent_workdir != home_for(self.agent_user):
            script = f'cd {shlex.quote(self.agent_workdir)} && exec "$@"'
            guest += ["sh", "-lc", script, TRAMPOLINE_NAME]
        guest.append(self.agent_command)
        guest += prompt_args(
            self.agent_prompt_mode, self.prompt_path, args, provider=self.agent_provider
        )
        return [
            "smolvm",
            *sv.exec_args(self.machine_name, guest, tty=tty, env_names=self.secret_names),
        ]

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

    def _require_running(self) -> None:
        state = self._smolvm.state(self.machine_name)
        if state is None:
            raise MachineNotFoundError(
                f"machine {self.machine_name!r} does not exist", machine=self.machine_name
            )
        if state != "running":
            raise MachineNotRunningError(
                f"machine {self.machine_name!r} is not running (state: {state}); "
                f"start it with: smolvm machine start -n {self.machine_name}",
                machine=self.machine_name,
            )

    def exec_agent(self, argv: Sequence[str], *, tty: bool = True) -> int:
        """Run the agent; return the agent's exit status.

        With `tty`, the session runs in process through `bottle.relay.run`, with the terminal
        title/colour set before and reset after (only when stdout is a terminal).

        Raises:
            MachineNotFoundError, MachineNotRunningError: before the agent starts.
            ConnectionLostError: smolvm exited 1 and the machine is no longer running.
        """
        self._ensure_open()
        full = self.agent_argv(argv, tty=tty)
        self._require_running()
        full[0] = self._smolvm.path
        env = self.child_env()
        log.debug("agent session in %s: %s", self.machine_name, full)
        try:
            if tty:
                status = self._run_tty(full, env)
            else:
                status = subprocess.run(full, env=env, check=False).returncode
        except PermissionError:
            raise SmolvmNotExecutableError(f"smolvm at {full[0]} is not executable") from None
        except FileNotFoundError:
            raise SmolvmNotFoundError(f"smolvm at {full[0]} disappeared") from None
        if status == 1:
            # Exit 1 is either the agent's own status or smolvm's error; the error text went to
            # the user's terminal, so ask smolvm whether the machine survived.
            try:
                state = self._smolvm.state(self.machine_name)
            except Exception:  # the probe is best effort; the status stands
                state = "running"
            if state != "running":
                raise ConnectionLostError(
                    f"connection to the VM lost: machine {self.machine_name!r} is "
                    f"{state or 'gone'} after the agent session ended",
                    returncode=status,
                    machine=self.machine_name,
                )
        return status

    def _run_tty(self, full: list[str], env: dict[str, str]) -> int:
        from bottle import relay

        deco = terminal.decoration(self.terminal_title, self.terminal_color)
        if deco is None or not os.isatty(1):
            return relay.run(
                full, env=env, machine=self.machine_name, hold_until_raw=True, output="direct"
            )
        _write_all(1, deco.start.encode())
        try:
            return relay.run(
                full, env=env, machine=self.machine_name, hold_until_raw=True, output="direct"
            )
        finally:
            with contextlib.suppress(OSError):
                _write_all(1, deco.reset.encode())

    def exec(self, script: str, *, user: str = "node") -> ExecResult:
        """Run `/bin/sh -c SCRIPT` as `user`; capture text output (bad bytes replaced).

        A status in the retry policy's `statuses` is retried (each retry logged); when every
        attempt ends that way, `RetryExhaustedError` carries all the results.
        """
        self._ensure_open()
        check.no_nul(script, "script")
        check.user_name(user)
        command = [*self._as_user(user), "/bin/sh", "-c", script]
        env = self.child_env()
        policy = self.retry
        results: list[ExecResult] = []
        for attempt in range(1, policy.attempts + 1):
            proc = self._smolvm.exec(
                self.machine_name, command, env_names=self.secret_names, env=env
            )
            result = ExecResult(proc.returncode, proc.stdout, proc.stderr)
            results.append(result)
            if result.returncode not in policy.statuses:
                return result
            if attempt < policy.attempts:
                log.warning(
                    "exec in machine %r exited with status %d (attempt %d of %d); "
                    "retrying in %.1f s",
                    self.machine_name,
                    result.returncode,
                    attempt,
                    policy.attempts,
                    policy.delay,
                )
                time.sleep(policy.delay)
        statuses = ", ".join(str(r.returncode) for r in results)
        raise RetryExhaustedError(
            f"exec in machine {self.machine_name!r} failed {len(results)} times "
            f"(statuses: {statuses}); giving up",
            results,
        )

    def cp_in(
        self,
        host_path: str | os.PathLike[str],
        guest_path: str,
        *,
        owner: str | None = None,
    ) -> None:
        """Copy a regular host file into the guest (directories are refused).

        smolvm writes the file as root:root; `owner` chowns it to that user afterwards.
        """
        self._ensure_open()
        src = check.host_file(host_path)
        check.guest_path(guest_path)
        if owner is not None:
            check.user_name(owner)
        if ":" in src:
            # smolvm would read "a:b" as a download from machine "a"; hand it a plain name.
            with tempfile.TemporaryDirectory(prefix="bottle-cp-") as tmp:
                link = os.path.join(tmp, "file")
                os.symlink(os.path.abspath(src), link)
                self._smolvm.cp_in(link, self.machine_name, guest_path)
        else:
            self._smolvm.cp_in(src, self.machine_name, guest_path)
        if owner is not None:
            script = f"chown -- {shlex.quote(owner)}: {shlex.quote(guest_path)}"
            self.exec(script, user="root").check(f"chown of {guest_path}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class SmolmachinesBottleBackend(BottleBackend):
    """Launches smolvm machines: create → start → provision → yield → stop → delete."""

    name = "smolmachines"

    def __init__(
        self, *, smolvm: sv.Smolvm | None = None, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self.smolvm = smolvm if smolvm is not None else sv.Smolvm()
        self.retry = retry

    def __repr__(self) -> str:
        return f"SmolmachinesBottleBackend(smolvm={self.smolvm!r})"

    @contextlib.contextmanager
    def launch(self, spec: LaunchSpec) -> Iterator[SmolmachinesBottle]:
        """Bring a machine up for `spec`, yield its bottle, and tear down what we created.

        Everything is checked before the first smolvm call. Each undo is registered the moment
        its step succeeds; teardown runs on any exit (KeyboardInterrupt included), and a
        teardown failure is logged without hiding the original error. A machine that already
        exists is refused with `MachineExistsError` and never stopped or deleted.
        """
        provider = get_provider(spec.agent_provider)
        user = spec.agent_user
        home = home_for(user)
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
            network=spec.network,
        )
        bottle = SmolmachinesBottle(
            spec.machine_name,
            prompt_path=guest_prompt,
            guest_env=spec.env,
            secret_env=spec.secret_env,
            agent_command=spec.agent_command or provider.command,
            agent_prompt_mode=spec.prompt_mode or provider.prompt_mode,
            agent_provider_template=provider.name,
            terminal_title=spec.terminal_title,
            terminal_color=spec.terminal_color,
            agent_workdir=spec.workdir or home,
            agent_user=user,
            smolvm=self.smolvm,
            retry=self.retry,
        )
        name = spec.machine_name
        smolvm = self.smolvm
        if smolvm.state(name) is not None:
            raise MachineExistsError(
                f"machine {name!r} already exists; launch creates its own machine and leaves "
                "existing ones alone (pick another name, or use the agent command)",
                machine=name,
            )
        with ExitStack() as stack:
            try:
                smolvm.run(create, machine=name)
            except MachineExistsError:
                raise  # someone else's machine, created since our check: not ours to touch
            except BaseException:
                # Failed or interrupted half-way: the name was free a moment ago, so whatever
                # stands under it now is what this create left behind.
                self._remove_leftover(name)
                raise
            stack.callback(self._undo, "delete", smolvm.delete, name)
            smolvm.start(name)
            stack.callback(self._undo, "stop", smolvm.stop, name)
            stack.enter_context(bottle)
            self._provision(bottle, prompt_src, guest_prompt)
            yield bottle

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
            bottle.exec(f"mkdir -p -- {quoted}", user=user).check("creating guest directories")
        if prompt_src is not None and guest_prompt is not None:
            bottle.cp_in(prompt_src, guest_prompt, owner=user)

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
