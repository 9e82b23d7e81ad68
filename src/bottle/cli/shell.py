"""`bottle shell`: an interactive shell in a machine, as the agent user, through the relay."""

from __future__ import annotations

import argparse

from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._command import SECRETS_NOTE, Command, Parser
from bottle.cli._options import add_env
from bottle.cli._secrets import from_environment

# Loaded with the command, before Ctrl-C is handed to it (bottle._console): the session needs
# the relay, and an import that a KeyboardInterrupt lands in can swallow it.
from bottle.relay import run as _relay  # noqa: F401


class Shell(Command):
    description = (
        "Open an interactive shell in machine NAME as USER (default: node, the agent's user), "
        "through bottle's relay, as `exec -it NAME SHELL` would: the user's shell from the "
        "guest's /etc/passwd, else /bin/sh; not a login shell. Exits with the shell's status."
    )
    usage = "%(prog)s [OPTIONS] NAME"
    epilog = SECRETS_NOTE

    def configure(self, parser: Parser) -> None:
        parser.add_argument("machine", metavar="NAME", help="machine name")
        parser.add_argument("-u", "--user", default="node", help="guest user (default: node)")
        parser.add_argument("-w", "--workdir", help="guest directory the shell starts in")
        add_env(parser)

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        secrets = from_environment(ns.secret_env)
        with SmolmachinesBottle(ns.machine, guest_env=dict(ns.env), secret_env=secrets) as bottle:
            result = bottle.shell(user=ns.user, workdir=ns.workdir)
        return result.check().returncode
