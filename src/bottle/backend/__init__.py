"""The backend contract a host CLI codes against.

`ExecResult`, `Bottle` and `BottleBackend` are the drop-in names; `AgentResult` is the richer
outcome of an agent session; `LaunchSpec` describes a machine to launch; `MachineInfo` is a
machine as a backend's listing shows it; `get_backend(name)`
finds a backend (`smolmachines` is built in, others register under the `bottle.backends`
entry-point group).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING

from bottle import _validate as check
from bottle import network as net
from bottle.errors import (
    BottleClosedError,
    InvalidInputError,
    Message,
    Param,
    UnknownBackendError,
)
from bottle.results import AgentResult, ExecResult, Progress

if TYPE_CHECKING:
    from typing_extensions import Self

    from bottle.relay import Recording

__all__ = [
    "ENTRY_POINT_GROUP",
    "AgentResult",
    "Bottle",
    "BottleBackend",
    "ExecResult",
    "LaunchSpec",
    "MachineInfo",
    "Progress",
    "available_backends",
    "get_backend",
]

ENTRY_POINT_GROUP = "bottle.backends"
BUILTIN_BACKEND = "smolmachines"
# The built-in backend is loaded by reference, like any registered one (pyproject.toml declares
# the same entry point): the contract never imports an implementation. importlib.metadata is
# imported only to find a backend by name: it costs more than the rest of this module (about
# 10 ms of start-up, with the email package it pulls in), which every command would pay.
_BUILTIN_TARGET = "bottle.backend.smolmachines:SmolmachinesBottleBackend"


class Bottle(abc.ABC):
    """A running machine that agents and scripts run in. Close it (or use `with`) when done."""

    _closed: bool = False

    @abc.abstractmethod
    def exec_agent(self, argv: Sequence[str], *, tty: bool = True) -> int:
        """Run the agent with `argv`, interactively when `tty`; return its exit status."""

    def run_agent(
        self,
        argv: Sequence[str],
        *,
        tty: bool = True,
        record: str | os.PathLike[str] | Recording | None = None,
        record_input: bool = False,
    ) -> AgentResult:
        """Like `exec_agent`, but the outcome's `check()` raises what went wrong around it.

        Backends that learn more than a status override this; the default knows the status
        and cannot record (``record``, a path or a `bottle.relay.Recording`, is refused with
        `InvalidInputError`).
        """
        if record is not None or record_input:
            raise InvalidInputError(f"the {type(self).__name__} backend cannot record sessions")
        return AgentResult(self.exec_agent(argv, tty=tty))

    @abc.abstractmethod
    def exec(self, script: str, *, user: str = "node") -> ExecResult:
        """Run a POSIX shell script in the guest as `user` and capture its output."""

    @abc.abstractmethod
    def cp_in(self, host_path: str | os.PathLike[str], container_path: str) -> None:
        """Copy a host file into the guest at `container_path`."""

    @property
    def closed(self) -> bool:
        """True once `close()` has run."""
        return self._closed

    def close(self) -> None:
        """Release the bottle. Idempotent."""
        if not self._closed:
            self._closed = True
            self._on_close()

    def _on_close(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op here
        """Hook for subclasses: runs once, on the first `close()`."""

    def _ensure_open(self) -> None:
        if self._closed:
            raise BottleClosedError(f"{self!r} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _frozen_env(env: Mapping[str, str] | None, what: str) -> Mapping[str, str]:
    return MappingProxyType(check.env_mapping(env, what))


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch. Checked on construction: a wrong type or value raises
    `InvalidInputError` (a `ValueError`) naming the field, at once.

    `prompt_file` is a *host* path to the system-prompt file; `launch` copies it into the
    guest at `prompt_guest_path` (default `~agent_user/.bottle/prompt.md`), owned by
    `agent_user`; `prompt_mode` overrides the provider's way of pointing the agent at it
    (`append_file`, `read_prompt_file`, `none`). `workdir` defaults to the agent user's home.
    `secret_env` values are never shown by `repr` and never placed on a command line.
    `network` is `"open"` (anything; also `True`), `"off"` (no network; also `False`),
    `"agent"` (only the agent provider's API hosts plus `allow_hosts` / `allow_cidrs`) or
    `"allow"` (only `allow_hosts` / `allow_cidrs`); a list of hosts and CIDRs is `"allow"`
    with those (addresses and `ADDR/PREFIX` go to `allow_cidrs`). `None` (the default) is
    open for a registry image (the pull needs it) and off otherwise; off with a registry image
    is refused.
    `allow_hosts` are DNS names or IP addresses (a name also allows its subdomains, every
    port); `allow_cidrs` are ranges like `10.0.0.0/8`. See `bottle.network`.
    `install_agent` installs the agent provider's CLI while provisioning (as root, the way
    `bottle.agent_provider` says: npm for claude and codex), for an image that lacks it; with
    an allow-list, the provider's `install_hosts` must be among `allow_hosts`.
    """

    machine_name: str
    image: str | None = None
    cpus: int | None = None
    memory_mib: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)
    prompt_file: str | None = None
    prompt_guest_path: str | None = None
    agent_provider: str = "claude"
    agent_command: str | None = None
    prompt_mode: str | None = None
    workdir: str | None = None
    network: bool | str | Sequence[str] | None = None
    agent_user: str = "node"
    terminal_title: str = ""
    terminal_color: str = ""
    allow_hosts: Sequence[str] = ()
    allow_cidrs: Sequence[str] = ()
    install_agent: bool = False

    def __post_init__(self) -> None:
        # Checked here, once: what passes is kept in its checked form (see bottle._validate).
        object.__setattr__(self, "machine_name", check.machine_name(self.machine_name))
        if check.optional_text(self.image, "image") is not None:
            assert self.image is not None
            if not self.image or self.image.startswith("-"):
                raise InvalidInputError(f"invalid image reference {self.image!r}")
        check.count(self.cpus, "cpus", optional=True)
        check.count(self.memory_mib, "memory_mib", optional=True)
        object.__setattr__(self, "env", _frozen_env(self.env, "env"))
        object.__setattr__(self, "secret_env", _frozen_env(self.secret_env, "secret_env"))
        if self.prompt_file is not None:
            if not isinstance(self.prompt_file, (str, os.PathLike)):
                raise InvalidInputError(
                    "prompt_file must be a path (str or os.PathLike) or None, "
                    f"not {type(self.prompt_file).__name__}"
                )
            object.__setattr__(self, "prompt_file", os.fspath(self.prompt_file))
            check.no_nul(self.prompt_file, "prompt file")
        if self.prompt_guest_path is not None:
            path = check.guest_path(self.prompt_guest_path, "prompt guest path")
            object.__setattr__(self, "prompt_guest_path", path)
        if self.workdir is not None:
            workdir = check.guest_path(self.workdir, Param("workdir"))
            object.__setattr__(self, "workdir", workdir)
        object.__setattr__(self, "agent_user", check.user_name(self.agent_user))
        check.optional_text(self.agent_command, "agent_command")
        check.optional_text(self.prompt_mode, "prompt_mode")
        check.text(self.agent_provider, "agent_provider")
        check.text(self.terminal_title, "terminal_title")
        check.text(self.terminal_color, "terminal_color")
        check.flag(self.install_agent, "install_agent")
        self._check_network()
        # What the provider, prompt mode, image, cpus, memory, title and colour may be is for
        # the backend that interprets them (it checks them before it starts anything).

    def _check_network(self) -> None:
        hosts = net.check_hosts(self.allow_hosts)
        cidrs = net.check_cidrs(self.allow_cidrs)
        if isinstance(self.network, (list, tuple)):
            # network=[...]: the allow-list itself.
            more_hosts, more_cidrs = net.split_allow_list(self.network)
            hosts = net.check_hosts([*hosts, *more_hosts])
            cidrs = net.check_cidrs([*cidrs, *more_cidrs])
            object.__setattr__(self, "network", net.NetworkMode.ALLOW)
        object.__setattr__(self, "allow_hosts", hosts)
        object.__setattr__(self, "allow_cidrs", cidrs)
        if self.network is None:
            mode = None
        else:
            mode = net.NetworkMode.parse(self.network)
            if isinstance(self.network, str):
                object.__setattr__(self, "network", mode)
        listed = bool(self.allow_hosts or self.allow_cidrs)
        if listed and (mode is None or not mode.restricted):
            raise InvalidInputError(
                Message(
                    "{hosts} and {cidrs} need {agent} (the agent provider's hosts plus these) "
                    "or {allow} (these only), not {now}",
                    hosts=Param("allow_hosts"),
                    cidrs=Param("allow_cidrs"),
                    agent=Param("network", "agent"),
                    allow=Param("network", "allow"),
                    now=Param("network", mode.value if mode is not None else None),
                )
            )
        if mode is net.NetworkMode.ALLOW and not listed:
            raise InvalidInputError(
                Message(
                    "{allow} needs {hosts} or {cidrs}; for no network at all use {off}",
                    allow=Param("network", "allow"),
                    hosts=Param("allow_hosts"),
                    cidrs=Param("allow_cidrs"),
                    off=Param("network", "off"),
                )
            )
        # What 'agent' allows depends on the provider, and a registry image's pull on the
        # smolvm version: the backend completes the policy (bottle.network.plan).

    @property
    def network_mode(self) -> net.NetworkMode | None:
        """`network` as a `NetworkMode` (None: chosen by the image, see above)."""
        if self.network is None:
            return None
        return net.NetworkMode.parse(self.network)

    def __repr__(self) -> str:
        shown = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "secret_env":
                value = {key: "<hidden>" for key in value}
            elif name == "env":
                value = dict(value)
            shown.append(f"{name}={value!r}")
        return f"LaunchSpec({', '.join(shown)})"


@dataclass(frozen=True)
class MachineInfo:
    """A machine as a backend lists it (`SmolmachinesBottleBackend.list_machines()`).

    `network` is the network policy a bottle launch gave it (`open`, `off`, `agent`,
    `allow`, with `allow_hosts` and `allow_cidrs` for the last two), or, for a machine
    bottle cannot tell it launched, what the backend knows: `on` (some network: smolvm keeps
    no allow-list where a listing shows it) or `off`; None when not even that is known.
    `created_at` is a Unix time (None: unknown). `launched_by_bottle` is True for a machine
    that a bottle launch created and labelled as such (smolvm 1.8.0 and later keep labels).
    """

    name: str
    state: str
    image: str | None = None
    network: str | None = None
    allow_hosts: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    created_at: float | None = None
    launched_by_bottle: bool = False
    cpus: int | None = None
    memory_mib: int | None = None

    def age(self, now: float) -> float | None:
        """Seconds from its creation to `now` (a Unix time); None when unknown."""
        if self.created_at is None:
            return None
        return max(0.0, now - self.created_at)


class BottleBackend(abc.ABC):
    """A way to run bottles. `launch(spec)` creates, starts, provisions and tears down."""

    name: str = ""

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> AbstractContextManager[Bottle]:
        """Context manager: bring a machine up per `spec`, yield its bottle, tear it down."""


def available_backends() -> list[str]:
    """Names of all backends: the built-in one and those registered as entry points."""
    from importlib import metadata

    names = {BUILTIN_BACKEND}
    names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_backend(name: str) -> BottleBackend:
    """Instantiate the backend registered under `name`."""
    from importlib import metadata

    builtin = metadata.EntryPoint(BUILTIN_BACKEND, _BUILTIN_TARGET, ENTRY_POINT_GROUP)
    found = [builtin] if name == BUILTIN_BACKEND else []
    found += [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    for ep in found[:1]:
        factory = ep.load()
        backend = factory()
        if not isinstance(backend, BottleBackend):
            raise UnknownBackendError(
                f"entry point {ep.value!r} for backend {name!r} did not produce a BottleBackend"
            )
        return backend
    raise UnknownBackendError(
        f"unknown backend {name!r}; known backends: {', '.join(available_backends())}"
    )
