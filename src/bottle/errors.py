"""Exceptions raised by bottle.

Every error bottle raises on purpose derives from `BottleError`, so a host CLI can catch one
class and print one line. Bad input detected before anything runs is an `InvalidInputError`,
which is also a `ValueError`; a missing or unrunnable smolvm is also the `FileNotFoundError` or
`PermissionError` that `subprocess` would have raised.

A message that names a parameter (`network='open'`) is a `Message`: as a string it speaks
Python, and a front end with other names for the same things (the command line's `--network
open`) renders it in its own terms.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

__all__ = [
    "AgentInstallError",
    "AgentNotFoundError",
    "BottleClosedError",
    "BottleError",
    "ConnectionLostError",
    "GuestCommandError",
    "GuestUserError",
    "InvalidInputError",
    "MachineExistsError",
    "MachineNotFoundError",
    "MachineNotRunningError",
    "MachineRunningError",
    "Message",
    "Param",
    "RetryExhaustedError",
    "SessionEndedError",
    "SessionError",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionPathError",
    "SessionRunningError",
    "SessionTeardownError",
    "SmolvmCommandError",
    "SmolvmError",
    "SmolvmNotExecutableError",
    "SmolvmNotFoundError",
    "SmolvmTimeoutError",
    "SmolvmTooOldError",
    "SmolvmUnavailableError",
    "SmolvmUsageError",
    "SmolvmVersionError",
    "TeardownInterrupted",
    "UnknownBackendError",
    "UnknownProviderError",
]


_NO_VALUE = object()


class Param:
    """A parameter named in an error message, with the value it should have when one is meant.

    `str()` says it in Python terms (`network='open'`, or `allow_hosts` alone); a front end
    that calls it something else says it its own way (see `Message.render`).
    """

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: object = _NO_VALUE) -> None:
        self.name = name
        self.value = value

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}" if self.has_value else self.name

    def __repr__(self) -> str:
        return f"Param({self.name!r}{f', {self.value!r}' if self.has_value else ''})"


class Message(str):
    """An error message that names parameters: a `str` in Python terms, renderable in others.

    `Message("use {mode}, not {bad!r}", mode=Param("network", "open"), bad="x")` is the string
    "use network='open', not 'x'"; `render(name)` formats the same template with each `Param`
    replaced by `name(param)`, and every other field as it is.
    """

    template: str
    fields: Mapping[str, object]

    def __new__(cls, template: str, /, **fields: object) -> Message:
        self = super().__new__(cls, template.format(**fields))
        self.template = template
        self.fields = fields
        return self

    def render(self, name: Callable[[Param], str]) -> str:
        """The message with every `Param` said as `name` says it."""
        return self.template.format(**{k: _render(v, name) for k, v in self.fields.items()})

    def __reduce__(self) -> tuple[Callable[..., Message], tuple[str, dict[str, object]]]:
        # Exceptions are pickled (multiprocessing): keep the template, not just the text.
        return _message, (self.template, dict(self.fields))


def _render(value: object, name: Callable[[Param], str]) -> object:
    if isinstance(value, Param):
        return name(value)
    if isinstance(value, Message):  # a part of the message, with parameters of its own
        return value.render(name)
    return value


def _message(template: str, fields: dict[str, object]) -> Message:
    return Message(template, **fields)


class BottleError(Exception):
    """Base class of every error bottle raises on purpose."""


class InvalidInputError(BottleError, ValueError):
    """Bad input, detected before any process was started."""


class UnknownBackendError(InvalidInputError):
    """No backend is registered under the requested name."""


class UnknownProviderError(InvalidInputError):
    """No agent provider is known under the requested name."""


class BottleClosedError(BottleError):
    """The bottle was used after `close()`."""


class SmolvmUnavailableError(BottleError, OSError):
    """smolvm cannot be run: not found, or not executable."""

    _errno = 0

    def __init__(self, message: str, *, filename: str | None = None) -> None:
        super().__init__(message)
        # The OSError fields a caller of subprocess would look at; str() stays the message.
        self.errno = self._errno
        self.strerror = os.strerror(self._errno)
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SmolvmNotFoundError(SmolvmUnavailableError, FileNotFoundError):
    """The smolvm executable could not be found (also a `FileNotFoundError`)."""

    _errno = errno.ENOENT


class SmolvmNotExecutableError(SmolvmUnavailableError, PermissionError):
    """A smolvm file was found but cannot be executed (also a `PermissionError`)."""

    _errno = errno.EACCES


class SmolvmVersionError(BottleError):
    """`smolvm --version` could not be run or read."""


class SmolvmTooOldError(SmolvmVersionError):
    """The installed smolvm is older than the minimum bottle supports."""

    def __init__(self, message: str, *, found: tuple[int, ...], minimum: tuple[int, ...]) -> None:
        super().__init__(message)
        self.found = found
        self.minimum = minimum


class SmolvmCommandError(BottleError):
    """A smolvm invocation failed (base of usage errors and smolvm-level errors)."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
        machine: str | None = None,
    ) -> None:
        super().__init__(message)
        # argv never holds secret values: secrets travel by name only (`-e KEY`).
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.machine = machine


class SmolvmUsageError(SmolvmCommandError):
    """smolvm rejected its command line (clap usage error, exit status 2)."""


class SmolvmError(SmolvmCommandError):
    """smolvm itself failed: exit status 1 with an `Error: ` line on stderr."""


class MachineNotFoundError(SmolvmError):
    """smolvm knows no machine of that name."""


class MachineNotRunningError(SmolvmError):
    """The machine exists but is not running."""


class MachineRunningError(BottleError):
    """Refused: the machine is running and removing it was not forced."""

    def __init__(self, message: str, *, machine: str, state: str) -> None:
        super().__init__(message)
        self.machine = machine
        self.state = state


class ConnectionLostError(SmolvmError):
    """The connection to the VM was lost (the VM died or its agent hung up)."""


class MachineExistsError(SmolvmError):
    """`create` refused: a machine of that name already exists."""


class SmolvmTimeoutError(SmolvmError):
    """A smolvm step did not finish in its time limit; smolvm was killed."""


class GuestUserError(BottleError):
    """A guest command cannot run as the wanted user on this machine and smolvm version."""

    def __init__(
        self, message: str, *, running_as: str, wanted: str, version: Sequence[int]
    ) -> None:
        super().__init__(message)
        self.running_as = running_as
        self.wanted = wanted
        self.version = tuple(version)


class AgentNotFoundError(BottleError):
    """The agent's command does not resolve for the agent's user in the guest: no session ran."""

    def __init__(self, message: str, *, command: str, user: str, machine: str) -> None:
        super().__init__(message)
        self.command = command
        self.user = user
        self.machine = machine


class AgentInstallError(BottleError):
    """Installing the agent provider's CLI in the guest failed."""


class CommandOutcome(Protocol):
    """What a finished guest command left: `bottle.results.ExecResult` is one. Described here,
    not imported, so that this bottom module imports nothing of bottle's."""

    @property
    def returncode(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


class GuestCommandError(BottleError):
    """A command in the guest exited with a non-zero status; `result` is its `ExecResult`."""

    def __init__(self, message: str, result: CommandOutcome) -> None:
        super().__init__(message)
        self.result = result


class RetryExhaustedError(GuestCommandError):
    """Every attempt of a retried guest command ended with a retryable status."""

    def __init__(self, message: str, results: Sequence[CommandOutcome]) -> None:
        super().__init__(message, results[-1])
        self.results = tuple(results)


class SessionError(BottleError):
    """A detached session could not be started, found, reached or cleaned up."""


class SessionNotFoundError(SessionError):
    """No session of that name (in this user's session directory)."""


class SessionExistsError(SessionError):
    """A session of that name exists already (running, or finished and not yet removed)."""


class SessionRunningError(SessionError):
    """The session's holder still runs: what was asked needs it ended."""


class SessionPathError(SessionError):
    """The session directory or socket is not safely this user's: a symlink, owned by
    another user, or open to others. Nothing was read from it or sent to it."""


class SessionTeardownError(SessionError):
    """Stopping and deleting the session's machine (``machine``) failed while the session was
    being removed: the machine is left, and the session is kept, so that removing it again
    tries again."""

    def __init__(self, message: str, *, machine: str) -> None:
        super().__init__(message)
        self.machine = machine


class SessionEndedError(SessionError):
    """The session is over: its program exited (``status``) or its holder died (``status``
    None). ``screen`` is the session's last output (empty when none was kept)."""

    def __init__(self, message: str, *, name: str, status: int | None, screen: bytes) -> None:
        super().__init__(message)
        self.name = name
        self.status = status
        self.screen = screen


class TeardownInterrupted(KeyboardInterrupt):
    """An interrupt (Ctrl-C) cut `launch`'s teardown short: the machine is left behind.

    Not a `BottleError`: it is the interrupt itself, which callers that catch
    KeyboardInterrupt keep catching. `machine` is the machine left behind and `step` what was
    cut short (`stopping`, `deleting`); the steps after it were not run.
    """

    def __init__(self, message: str, *, machine: str, step: str) -> None:
        super().__init__(message)
        self.machine = machine
        self.step = step

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
