"""What every subcommand is: a `Command` with its options and its run, parsed by `Parser`."""

from __future__ import annotations

import abc
import argparse
import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

from bottle.cli._errors import FAILURE, PROG

# Accepted before the subcommand and after it (`bottle -q launch …`, `bottle launch -q …`).
GLOBAL_OPTIONS = (
    ("-v", "--verbose", "log each smolvm call"),
    ("-q", "--quiet", "no progress display"),
)

SECRETS_NOTE = """\
Secrets: --secret-env NAME takes a variable NAME from bottle's own environment and hands it to
the guest by name only; the value never appears on any command line.
"""


class Entry(NamedTuple):
    """A line of the command table (`bottle.cli._main.COMMANDS`)."""

    module: str
    # The `Command` class in `module`; None: a program of its own, run as `module.main(args)`
    # with every argument after its name.
    command: str | None
    summary: str


def _columns() -> int:
    """The terminal's width as `shutil.get_terminal_size` tells it ($COLUMNS, else stdout's
    terminal, else 80)."""
    with contextlib.suppress(ValueError):
        if (columns := int(os.environ.get("COLUMNS", ""))) > 0:
            return columns
    try:
        fd = -1 if sys.__stdout__ is None else sys.__stdout__.fileno()
        return os.get_terminal_size(fd).columns or 80
    except (ValueError, OSError):  # no stdout, or not a terminal
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own help layout. Without a width it imports shutil (with the archive modules
    under it) to find one, in every parser it builds, for every option added: a few ms of every
    command's start-up for help that is seldom shown."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
        width: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse with bottle's exit status for a usage error (docker's 125, not argparse's 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(FAILURE, f"{self.prog}: error: {message}\n")


class Command(abc.ABC):
    """One subcommand: its options (`configure`) and its run over the Python API (`run`)."""

    description: str = ""
    usage: str | None = None
    epilog: str | None = None
    # Whether it takes arguments after `--` (the agent's); any other command refuses them.
    takes_extra: bool = False
    # Whether its log may be set up only when its first record comes (`bottle._log`): true
    # where everything it runs logs through `bottle._log`, not `logging` itself.
    defers_logging: bool = False
    # The command table, handed over before `run` (a command that lists the others, such as
    # `completion`, reads it here: the table's module sits above the commands).
    commands: Mapping[str, Entry] = {}

    @abc.abstractmethod
    def configure(self, parser: Parser) -> None:
        """Add the command's own options and arguments."""

    @abc.abstractmethod
    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        """Do it; return the exit status."""

    def parse(self, parser: Parser, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
        """The command's options, and the arguments after the first `--` (the agent's)."""
        extra: list[str] = []
        if "--" in args:
            cut = args.index("--")
            args, extra = args[:cut], args[cut + 1 :]
        ns = parser.parse_args(args)
        if extra and not self.takes_extra:
            parser.error(f"{parser.prog.split()[-1]} takes no arguments after '--'")
        return ns, extra

    def parser(self, name: str) -> Parser:
        """The command's parser, global options included."""
        parser = Parser(
            prog=f"{PROG} {name}",
            description=self.description,
            usage=self.usage,
            epilog=self.epilog,
        )
        self.configure(parser)
        group = parser.add_argument_group("global options (also before the command)")
        for short, long, text in GLOBAL_OPTIONS:
            group.add_argument(short, long, action="store_true", help=text)
        return parser
