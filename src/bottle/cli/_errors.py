"""How the command line reports a failure: one line in its own terms, and one exit status.

The Python API words its errors in its own terms (`network='open'`); a `Message` names those
parameters as `Param`s, which `flag` says the command line's way (`--network open`).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from bottle.cli._stderr import CONSOLE
from bottle.errors import (
    BottleError,
    GuestCommandError,
    MachineNotFoundError,
    MachineNotRunningError,
    Message,
    Param,
    TeardownInterrupted,
)

PROG = "bottle"

# bottle's own failure (bad usage or input, smolvm missing or too old, no such machine, smolvm
# failing around the command): docker's choice, so that a guest's 1 or 2 is never taken for it.
FAILURE = 125
INTERRUPTED = 130  # 128 + SIGINT
BROKEN_PIPE = 141  # 128 + SIGPIPE

# The command-line spelling of every API parameter an error message can name (a test checks
# that none is missing).
FLAGS = {
    "agent_user": "--user",
    "allow_cidrs": "--allow-cidr",
    "allow_hosts": "--allow-host",
    "cpus": "--cpus",
    "detach_keys": "--detach-keys",
    "env": "-e",
    "guest_env": "-e",
    "image": "--image",
    "install_agent": "--install-agent",
    "memory_mib": "--memory",
    "network": "--network",
    "record": "--record",
    "record_input": "--record-input",
    "secret_env": "--secret-env",
    "workdir": "--workdir",
}


def flag(param: Param) -> str:
    """`param` as the command line spells it: `--network open`, `--allow-host a --allow-host b`."""
    if param.name == "tty":
        # The command line has only the way out of a terminal session.
        return "drop --no-tty" if param.value is not False else "--no-tty"
    name = FLAGS.get(param.name)
    if name is None:
        return str(param)
    if not param.has_value or param.value is True:
        return name
    if param.value is None:
        return f"no {name}"
    if param.value is True:  # a switch: given, it is on
        return name
    values = param.value if isinstance(param.value, (list, tuple)) else [param.value]
    return " ".join(f"{name} {shlex.quote(str(v))}" for v in values)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or nothing."""
    import difflib  # only for a mistake: not part of every command's start-up

    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.7)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def _machines() -> list[str]:
    from bottle.smolvm import Smolvm

    try:
        return [str(m.get("name", "")) for m in Smolvm().ls()]
    except (BottleError, OSError):
        return []  # the suggestion is a courtesy: never a second error


def _state(name: str) -> str | None:
    from bottle.smolvm import Smolvm

    try:
        return Smolvm().state(name)
    except (BottleError, OSError):
        return None


def describe(exc: BaseException) -> str:
    """The one line that tells a command-line user what went wrong."""
    machine = getattr(exc, "machine", None)
    if isinstance(exc, MachineNotFoundError) and machine:
        # One text whether bottle asked first or smolvm said `vm not found`.
        text = f"machine {machine!r} does not exist{did_you_mean(machine, _machines())}"
    elif isinstance(exc, MachineNotRunningError) and machine:
        state = _state(machine)
        shown = f" (state: {state})" if state else ""
        text = (
            f"machine {machine!r} is not running{shown}; start it with: "
            f"smolvm machine start --name {machine}"
        )
    elif exc.args and isinstance(exc.args[0], Message):
        text = exc.args[0].render(flag)
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def report(exc: BaseException) -> int:
    """Print `exc` as one error line; return the exit status it stands for."""
    CONSOLE.print(f"{PROG}: error: {describe(exc)}")
    if isinstance(exc, GuestCommandError):
        return exc.result.returncode or FAILURE  # the guest's own status (137: retry spent)
    return FAILURE


def run(command: Callable[[], int], interrupts: Callable[[], AbstractContextManager[None]]) -> int:
    """Run a command; a failure bottle knows is one error line and its exit status."""
    try:
        with interrupts():
            return command()
    except TeardownInterrupted as exc:
        # Ctrl-C during the teardown gave it up: say what is left, and how to remove it.
        CONSOLE.print(
            f"{PROG}: interrupted: machine {exc.machine!r} is left behind ({exc.step} it was "
            f"cut short); remove it with: {PROG} rm -f {exc.machine}"
        )
        return INTERRUPTED
    except KeyboardInterrupt:
        CONSOLE.print(f"{PROG}: interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        # What it printed is no longer read (`bottle ls | head -1`): as a shell's own
        # commands end on SIGPIPE, quietly, and with nothing left to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except (BottleError, ValueError, OSError) as exc:
        return report(exc)
