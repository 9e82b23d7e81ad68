"""`bottle exec` in its plain, warm form, run without the full command line's imports.

A `bottle exec NAME CMD` whose answers are in bottle's cache is one smolvm call, and what it
costs beyond that call is Python's start-up: the full path's imports (argparse, re, json,
subprocess, threading, dataclasses and bottle's backend) are several times the interpreter's
own. So the console script (`bottle._console`) tries this path first. It takes only the plain
form, `bottle exec [-u USER] [-w DIR] NAME [--] COMMAND [ARG...]` with nothing else on the
command line, no config file (one could give exec defaults), no `BOTTLE_SMOLVM`, a smolvm whose
answers and the machine's guest user are in the cache, and a smolvm that needs no warning; it
builds the very call the full path builds, from the same pieces (`bottle._execwire`), runs it
as `bottle.smolvm.run_streamed` runs it (stdin on /dev/null, stdout this process's own, stderr
through the wrapper's filter and the hold on a last `Error: ` line), and ends with the guest's
status when the command started and nothing says smolvm failed around it.

Anything else goes to the full path: before anything ran (`run` returns None), or after, with
the run's outcome (a `bottle._execwire.Ran`), which the full path finishes as if it had made
the run itself (`SmolmachinesBottle.run_command`): the wrapper's refusal (nothing ran), a kill
before the command started (the bring-up retry decides), a last `Error: ` line with a failing
status (smolvm's failure, or the guest's line: the machine's state may have to say). The
command is never run twice by the two paths.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C half of `signal`, without its enums
import os
import select
import sys
import time

from bottle import _cache
from bottle import _execwire as ew

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextlib import AbstractContextManager

INTERRUPTED = 130  # as bottle.cli._errors says it, after "bottle: interrupted"
_STDERR_GRACE = ew.STDERR_GRACE
# The environment variables of the full path's own choices: the config file, another smolvm.
CONFIG_ENV = "BOTTLE_CONFIG"
SMOLVM_ENV = "BOTTLE_SMOLVM"


def config_path(environ: Mapping[str, str]) -> str | None:
    """The config file to read (it may not exist), or None for none: `$BOTTLE_CONFIG` (empty:
    none), else `$XDG_CONFIG_HOME/bottle/config.toml` (`~/.config/...` without it)."""
    if CONFIG_ENV in environ:
        return environ[CONFIG_ENV] or None
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "bottle", "config.toml")


def plain_exec(args: list[str]) -> tuple[str, str, str | None, list[str]] | None:
    """(NAME, USER, DIR, COMMAND) of `exec [-u USER] [-w DIR] NAME [--] COMMAND...` (`args`
    after `exec`), read as the full path reads it (options up to the command word, its value
    after `-u`/`--user`/`-w`/`--workdir` whole, attached or `=`-joined), or None for anything
    else, or anything the full path would refuse."""
    name: str | None = None
    user, workdir = "node", None
    command: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            if name is None:
                if arg == "--":
                    return None
                name = arg
                i += 1
                continue
            command = args[i + 1 :] if arg == "--" else args[i:]
            break
        if arg.startswith("--"):
            option, eq, value = arg.partition("=")
            attached = bool(eq)
            if option not in ("--user", "--workdir"):
                return None
        elif arg[:2] in ("-u", "-w"):
            option, value = ("--user" if arg[1] == "u" else "--workdir"), arg[2:]
            attached = bool(value)
        else:
            return None
        if not attached:
            if i + 1 == len(args):
                return None
            i += 1
            value = args[i]
        if value.startswith("-"):
            return None  # argparse's business: an option, or a value it may take for one
        if option == "--user":
            user = value
        else:
            workdir = value
        i += 1
    if (
        name is None or not command or "=" in command[0]
        or ew.machine_name_problem(name) is not None or not ew.user_name_ok(user)
        or (workdir is not None and not ew.guest_path_ok(workdir))
    ):  # fmt: skip
        return None
    return name, user, workdir, command


def exec_call(
    name: str, user: str, workdir: str | None, command: list[str], environ: Mapping[str, str]
) -> tuple[list[str], str, tuple[str, str] | None] | None:
    """The smolvm call of the full path's first run of `command` (its argv, nonce and the kept
    answer it rests on), from bottle's cache alone; None where the cache cannot say."""
    if environ.get(SMOLVM_ENV):
        return None
    path = ew.which("smolvm", environ.get("PATH", os.defpath))
    if path is None:
        return None
    try:
        smolvm = ew.identity(path)
    except OSError:
        return None
    facts = _cache.load(ew.FACTS, smolvm)
    version = ew.kept_version(facts)
    user_option = (facts or {}).get("exec_user_option")
    if version is None or version < ew.PASTE_SAFE_VERSION or not isinstance(user_option, bool):
        return None  # the full path asks smolvm, or warns about an old one
    found = None
    switch: list[str] = []
    if not user_option:
        kind = ew.kinds_differ(version)  # a streamed exec is smolvm's interactive kind
        found = ew.kept_guest(_cache.load(ew.GUEST, ew.guest_key(smolvm, name, kind, environ)))
        can = None if found is None else ew.user_switch(user, found[0])
        if can is None:
            return None  # not kept; or the full path asks the guest again before it refuses
        switch = can
    nonce = ew.new_nonce()
    guest = ew.wrapped(
        nonce, found[1] if found else "", [*switch, "env", *ew.user_env(user), *command]
    )
    args = ew.exec_argv(
        name, guest, interactive=True, workdir=workdir, user=user if user_option else None
    )
    return [path, *args], nonce, found


class _Child:
    """smolvm, started with stdin on /dev/null and stderr on a pipe, as `run_streamed` starts
    it (`subprocess`'s defaults: other descriptors closed, SIGPIPE and SIGXFSZ as default)."""

    def __init__(self, argv: list[str], marks: ew.MarkFilter, mask: set[int]) -> None:
        self.hold = ew.StderrHold(marks)
        self.status: int | None = None
        self.shown = True
        self.cut = False  # its stderr stayed open past the grace
        read, write = os.pipe()
        if min(read, write) <= 2:
            # This process's own stdin, stdout or stderr is closed: subprocess's business.
            os.close(read)
            os.close(write)
            raise OSError("a standard descriptor is closed")
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
            (os.POSIX_SPAWN_DUP2, write, 2),
        ]
        for fd in _inheritable_fds():
            if fd > 2:
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
        defaults = [getattr(_signal, s) for s in ("SIGPIPE", "SIGXFZ", "SIGXFSZ")
                    if hasattr(_signal, s)]  # fmt: skip
        self.read = read
        try:
            self.pid = os.posix_spawn(
                argv[0], argv, os.environ, file_actions=actions, setsigdef=defaults,
                setsigmask=mask,
            )  # fmt: skip
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        # Tells when smolvm is gone while its stderr stays open; without it (not Linux, or a
        # kernel before 5.3), stderr's end is waited for.
        self.pidfd: int | None = None
        try:  # noqa: SIM105 - contextlib is ms of this module's start-up
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pass

    def copy(self, until: float | None = None) -> None:
        """Copy stderr on until it ends (or, once smolvm is gone, `_STDERR_GRACE` s have passed
        with it still open), reaping smolvm when it exits."""
        poller = select.poll()
        poller.register(self.read, select.POLLIN)
        if self.status is None and self.pidfd is not None:
            poller.register(self.pidfd, select.POLLIN)
        while True:
            wait = None if until is None else max(0.0, until - time.monotonic()) * 1000
            ready = poller.poll(wait)
            if not ready:
                self.cut = True  # what is still held is left, as the full path leaves it
                return
            for fd, _ in ready:
                if fd == self.pidfd:
                    poller.unregister(fd)
                    self.reap()
                    until = time.monotonic() + _STDERR_GRACE
                    continue
                chunk = os.read(self.read, 65536)
                if not chunk:
                    if self.status is None:
                        self.reap()
                    return
                data = self.hold.feed(chunk)
                if self.shown and data:
                    # A stderr that takes no more (closed) must not stop smolvm: drain on.
                    self.shown = ew.write_all_quietly(2, data)

    def reap(self) -> None:
        _, raw = os.waitpid(self.pid, 0)
        self.status = os.waitstatus_to_exitcode(raw)

    def kill(self) -> None:
        """SIGKILL smolvm and reap it (bottle.smolvm's `_kill`), then copy what it left."""
        if self.status is None:
            try:  # noqa: SIM105 - as above
                os.kill(self.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:  # noqa: SIM105 - as above
                self.reap()
            except ChildProcessError:
                pass  # reaped as the interrupt came, its status not kept: 130 all the same
        self.copy(time.monotonic() + _STDERR_GRACE)

    def close(self) -> None:
        os.close(self.read)
        if self.pidfd is not None:
            os.close(self.pidfd)


def _inheritable_fds() -> list[int]:
    try:
        names = os.listdir("/dev/fd")
    except OSError:
        return []
    fds = []
    for name in names:
        try:
            if os.get_inheritable(int(name)):
                fds.append(int(name))
        except (OSError, ValueError):
            pass  # the listing's own descriptor, closed by now
    return fds


def run(
    args: list[str], interrupts: Callable[[], AbstractContextManager[None]]
) -> int | ew.Ran | None:
    """Run `bottle exec ARGS` here if it is plain and warm: its exit status; or the outcome of
    the run made, for the full path to finish; or None: nothing ran, the full path's turn."""
    plain = plain_exec(args)
    if plain is None:
        return None
    environ = os.environ
    config = config_path(environ)
    if config is not None and os.path.lexists(config):
        return None
    call = exec_call(*plain, environ)
    if call is None:
        return None
    argv, nonce, found = call
    marks = ew.MarkFilter(nonce)
    # SIGINT held until the child is ours to kill: a KeyboardInterrupt between its start and
    # here would leave it running unwatched.
    held = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    try:
        try:
            child = _Child(argv, marks, held)
        except OSError:
            return None  # nothing ran: the full path says why
        try:
            with interrupts():
                _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
                child.copy()
        except KeyboardInterrupt:
            _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
            child.kill()
            ew.write_all_quietly(2, b"bottle: interrupted\n")
            return INTERRUPTED
        finally:
            child.close()
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
    assert child.status is not None
    kept = b"" if child.cut else child.hold.end()
    if marks.started and not ew.may_be_smolvms(child.status, kept):
        # The command ran, and nothing says smolvm failed around it: its status is its own
        # (a kill after it started too), as the full path would find.
        ew.write_all_quietly(2, kept)
        return ew.exit_status(child.status)
    return ew.Ran(argv, nonce, found, child.status, kept, marks)


def main(interrupts: Callable[[], AbstractContextManager[None]]) -> int | ew.Ran | None:
    """`run` for `bottle exec ...` as the console script was given it; None for anything else."""
    args = sys.argv[1:]
    if args[:1] != ["exec"]:
        return None
    return run(args[1:], interrupts)
