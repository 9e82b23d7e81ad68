"""Dispatch: the table of commands, global options anywhere, help, and exit statuses.

A command's module is imported only when it runs (pip's way), and before Ctrl-C is handed to it
(see `bottle._console`): `bottle --help` and `bottle --version` load no backend.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

from bottle._execwire import Ran
from bottle.cli._command import GLOBAL_OPTIONS, SECRETS_NOTE, Command, Entry
from bottle.cli._errors import FAILURE, PROG, did_you_mean, report, run

COMMANDS: dict[str, Entry] = {
    "launch": Entry(
        "bottle.cli.launch",
        "Launch",
        "create and start a machine, run the agent in it, then tear it down",
    ),
    "agent": Entry("bottle.cli.agent", "Agent", "run the agent in an existing, running machine"),
    "exec": Entry("bottle.cli.exec", "Exec", "run a command in a machine, exit with its status"),
    "shell": Entry("bottle.cli.shell", "Shell", "open an interactive shell in a machine"),
    "cp": Entry("bottle.cli.cp", "Cp", "copy files and directories between host and machine"),
    "ls": Entry("bottle.cli.machines", "Ls", "list machines: state, image, network, age"),
    "stop": Entry("bottle.cli.machines", "Stop", "stop machines"),
    "rm": Entry("bottle.cli.machines", "Rm", "remove machines (-f: running ones too)"),
    "completion": Entry(
        "bottle.cli.completion", "Completion", "print a shell's completion script for bottle"
    ),
    "attach": Entry(
        "bottle.cli.attach", "Attach", "connect this terminal to a detached agent session"
    ),
    "sessions": Entry(
        "bottle.cli.sessions",
        "Sessions",
        "list detached agent sessions (rm: forget them; -f: running ones too)",
    ),
    "relay": Entry(
        "bottle.relay.__main__", None, "run an interactive command through the PTY relay"
    ),
    "bench": Entry("bottle.bench", None, "measure the relay side by side with its peers"),
}

USAGE = f"usage: {PROG} [-v] [-q] COMMAND [ARG...]\n       {PROG} --version\n"

# The global options (and help and version) before the command, by the name they set.
_LONG = {long: long[2:] for _, long, _ in GLOBAL_OPTIONS} | {
    "--help": "help",
    "--version": "version",
}
_SHORT = {short[1]: long[2:] for short, long, _ in GLOBAL_OPTIONS} | {"h": "help"}


class _Usage(Exception):
    pass


def _help() -> str:
    width = max(map(len, COMMANDS))
    commands = "".join(f"  {n:<{width}}  {e.summary}\n" for n, e in COMMANDS.items())
    options = "".join(f"  {s}, {long:<11}{text}\n" for s, long, text in GLOBAL_OPTIONS)
    return f"""{USAGE}
Run AI agent CLIs inside smolvm microVMs.

commands:
{commands}
global options (before or after the command):
  -h, --help     show this help ({PROG} COMMAND --help: that command's)
  --version      show bottle's version, the relay in use and the smolvm found
{options}
exit status:
  the agent's or the guest command's own status, unchanged (128+N: ended by signal N)
  {FAILURE}  bottle itself failed: bad usage or input, smolvm missing or too old, no such
       machine, smolvm failing around the command
  130  interrupted (Ctrl-C)
  `{PROG} relay` and `{PROG} bench` are programs of their own: see their --help.

configuration:
  $XDG_CONFIG_HOME/bottle/config.toml (~/.config/bottle/config.toml; BOTTLE_CONFIG=FILE for
  another) gives defaults: image, cpus, memory, network, allow-hosts, allow-cidrs, secret-env,
  provider, at its top for every command with that flag, in a [COMMAND] table for one.
  A flag on the command line wins.

{SECRETS_NOTE}"""


def _split(args: list[str]) -> tuple[set[str], str | None, list[str]]:
    """The global options before the command, the command, and everything after it."""
    seen: set[str] = set()
    for i, arg in enumerate(args):
        if arg == "--" or not arg.startswith("-") or arg == "-":
            if arg == "--":
                raise _Usage("a command goes before '--'")
            return seen, arg, args[i + 1 :]
        if arg.startswith("--"):
            # argparse's rule, kept here too: a long option may be shortened while unique.
            found = [name for opt, name in _LONG.items() if opt.startswith(arg)]
            if arg in _LONG:
                found = [_LONG[arg]]
            if len(found) != 1:
                what = "ambiguous" if found else "unknown"
                raise _Usage(f"{what} option {arg!r} before the command")
            seen.add(found[0])
        else:
            for letter in arg[1:]:
                if letter not in _SHORT:
                    raise _Usage(f"unknown option '-{letter}' before the command")
                seen.add(_SHORT[letter])
    return seen, None, []


def _usage_error(message: str) -> int:
    sys.stderr.write(f"{USAGE}{PROG}: error: {message}\n")
    return FAILURE


def main(
    argv: Sequence[str] | None = None,
    *,
    interrupts: Callable[[], AbstractContextManager[None]] = nullcontext,
    ran: Ran | None = None,
) -> int:
    """Run the command line; return the exit status.

    `interrupts` is the span in which Ctrl-C is the command's KeyboardInterrupt (the console
    script's `bottle._console.interrupts`); outside it, a Ctrl-C is left as the caller set it.
    `ran`: the run of a plain `exec` that `bottle._quickexec` made, for `exec` to finish.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        seen, name, rest = _split(args)
    except _Usage as exc:
        return _usage_error(str(exc))
    if "help" in seen or (name is None and "version" not in seen):
        sys.stdout.write(_help())  # plain `bottle` too, as docker and kubectl do
        return 0
    if "version" in seen:
        from bottle.cli._version import report as version_report

        sys.stdout.write(version_report())
        return 0
    assert name is not None
    entry = COMMANDS.get(name)
    if entry is None:
        return _usage_error(f"unknown command {name!r}{did_you_mean(name, COMMANDS)}")

    module = importlib.import_module(entry.module)
    if entry.command is None:
        return run(lambda: int(module.main(rest) or 0), interrupts)

    command = getattr(module, entry.command)()
    assert isinstance(command, Command)
    command.commands = COMMANDS
    parser = command.parser(name)
    broken: ValueError | None = None
    try:
        defaults = _config_defaults(name, parser)
    except ValueError as exc:
        broken, defaults = exc, lambda ns: None  # said after parsing: --help still helps
    ns, extra = command.parse(parser, rest)
    if ran is not None:
        assert name == "exec", name
        ns.ran = ran
    if broken is not None:
        return report(broken)
    defaults(ns)
    for _, long, _ in GLOBAL_OPTIONS:  # given before the command, or after it
        setattr(ns, long[2:], getattr(ns, long[2:]) or long[2:] in seen)
    _configure_logging(verbose=ns.verbose, deferred=command.defers_logging)
    return run(lambda: command.run(ns, extra), interrupts)


def _config_defaults(
    name: str, parser: argparse.ArgumentParser
) -> Callable[[argparse.Namespace], None]:
    """The user's config file's defaults for command `name` (nothing when there is none)."""
    from bottle.cli import _config

    config = _config.load(COMMANDS)
    if config is None:
        return lambda ns: None
    return _config.apply(config, name, parser)


def _configure_logging(*, verbose: bool, deferred: bool) -> None:
    """The log through the console (`bottle.cli._log`); with `deferred`, only once a record
    could be shown: most runs of such a command show none, and loading `logging` costs
    several ms of its start-up (see `bottle._log`)."""
    from bottle import _log

    def configure() -> None:
        from bottle.cli import _log as cli_log

        cli_log.configure(verbose=verbose)

    if verbose or not deferred:
        import logging  # noqa: F401 - loaded now, so that every record reaches it

    _log.when_loaded(configure)
