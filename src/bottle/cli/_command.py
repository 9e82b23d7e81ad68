"""What every subcommand is: a `Command` with its options and its run, parsed by `Parser`."""

from __future__ import annotations

import abc
import argparse
import sys
from typing import NoReturn

from bottle.cli._errors import FAILURE, PROG

# Accepted before the subcommand and after it (`bottle -q launch …`, `bottle launch -q …`).
GLOBAL_OPTIONS = (
    ("-v", "--verbose", "log each smolvm call"),
    ("-q", "--quiet", "no progress display while launching"),
)

SECRETS_NOTE = """\
Secrets: --secret-env NAME takes a variable NAME from bottle's own environment and hands it to
the guest by name only; the value never appears on any command line.
"""


class Parser(argparse.ArgumentParser):
    """argparse with bottle's exit status for a usage error (docker's 125, not argparse's 2)."""

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

    @abc.abstractmethod
    def configure(self, parser: Parser) -> None:
        """Add the command's own options and arguments."""

    @abc.abstractmethod
    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        """Do it; return the exit status."""

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
