"""`bottle exec`: run a shell script in a machine, print its output, exit with its status."""

from __future__ import annotations

import argparse
import sys

from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._command import SECRETS_NOTE, Command, Parser
from bottle.cli._options import add_env, add_name
from bottle.cli._secrets import from_environment


class Exec(Command):
    description = (
        "Run SCRIPT with /bin/sh -c in the machine as USER; print its output and exit with its "
        "status. SCRIPT '-' reads the script from standard input."
    )
    epilog = SECRETS_NOTE

    def configure(self, parser: Parser) -> None:
        add_name(parser)
        parser.add_argument("-u", "--user", default="node", help="guest user (default: node)")
        parser.add_argument("-w", "--workdir", help="guest directory the script runs in")
        add_env(parser)
        parser.add_argument("script", metavar="SCRIPT", help="POSIX shell script, or '-' for stdin")

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        script = sys.stdin.read() if ns.script == "-" else ns.script
        secrets = from_environment(ns.secret_env)
        with SmolmachinesBottle(ns.name, guest_env=dict(ns.env), secret_env=secrets) as bottle:
            result = bottle.exec(script, user=ns.user, workdir=ns.workdir)
        if result.error is not None or result.retry_exhausted:
            # smolvm's failure, or every attempt killed: say so precisely.
            result.check(f"exec in machine {ns.name!r}")
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
        sys.stderr.flush()
        return result.returncode
