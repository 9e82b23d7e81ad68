"""`bottle exec`: run a command in a machine, its output as it comes, its status as bottle's."""

from __future__ import annotations

import argparse
import sys

from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._command import SECRETS_NOTE, Command, Parser
from bottle.cli._options import add_env, add_retry, retry_policy, split_at_command
from bottle.cli._secrets import from_environment
from bottle.errors import InvalidInputError


class Exec(Command):
    defers_logging = True  # the backend logs through bottle._log
    description = (
        "Run COMMAND in machine NAME as USER and exit with its status. Its output comes as it "
        "is written, byte for byte; its standard input is empty unless -i forwards this one "
        "(its end included). -t runs it on a terminal through bottle's relay. Options after "
        "COMMAND are COMMAND's. -c runs a shell script instead (/bin/sh -c SCRIPT); the older "
        "form `exec -n NAME SCRIPT` still does."
    )
    usage = (
        "%(prog)s [OPTIONS] NAME [--] COMMAND [ARG...]\n"
        "       %(prog)s [OPTIONS] NAME -c SCRIPT\n"
        "       %(prog)s [OPTIONS] -n NAME SCRIPT"
    )
    epilog = "SCRIPT '-' reads the script from standard input.\n\n" + SECRETS_NOTE

    def configure(self, parser: Parser) -> None:
        parser.add_argument("machine", metavar="NAME", nargs="?", help="machine name")
        parser.add_argument(
            "-i", "--interactive", action="store_true",
            help="forward standard input to the command, its end included",
        )  # fmt: skip
        parser.add_argument(
            "-t", "--tty", action="store_true",
            help="run the command on a terminal, through bottle's relay (sized and resized "
            "with this one; its stderr comes on the terminal too)",
        )  # fmt: skip
        parser.add_argument("-u", "--user", default="node", help="guest user (default: node)")
        parser.add_argument("-w", "--workdir", help="guest directory the command runs in")
        add_env(parser)
        add_retry(parser, before="it started")
        parser.add_argument(
            "-c", dest="script", metavar="SCRIPT", help="run SCRIPT with /bin/sh -c instead"
        )
        parser.add_argument(
            "-n", "--name", help="machine name, the older form: then one word is a SCRIPT"
        )
        parser.set_defaults(ran=None)  # the light path's run (bottle._quickexec), to finish

    def parse(self, parser: Parser, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
        own, command, marked = split_at_command(parser, args, name_option="name")
        ns = parser.parse_args(own)
        ns.command, ns.marked = command, marked
        if ns.tty:
            # Before Ctrl-C is handed to the command (bottle._console): an import that a
            # KeyboardInterrupt lands in can swallow it. Only then: the relay is no part of
            # a plain exec's cost.
            import bottle.relay  # noqa: F401
        return ns, []

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        if ns.machine is not None and ns.name is not None:
            raise InvalidInputError(
                f"the machine is given twice ({ns.machine!r} and -n {ns.name!r}): give NAME once"
            )
        name = ns.machine if ns.machine is not None else ns.name
        if name is None:
            raise InvalidInputError("exec needs the machine's NAME and a COMMAND")
        argv = _guest_argv(ns)
        if _reads_script(ns):
            if ns.interactive:
                raise InvalidInputError(
                    "-i cannot forward standard input: the script is read from it"
                )
            argv[-1] = sys.stdin.read()
        secrets = from_environment(ns.secret_env)
        with SmolmachinesBottle(
            name, guest_env=dict(ns.env), secret_env=secrets, retry=retry_policy(ns)
        ) as bottle:
            # Made already by the light path, as run_command makes its first run: finished, never
            # made again.
            bottle._handed = ns.ran
            result = bottle.run_command(
                argv, user=ns.user, workdir=ns.workdir, stdin=ns.interactive, tty=ns.tty
            )
        return result.check().returncode


def _script_form(ns: argparse.Namespace) -> bool:
    """`exec -n NAME SCRIPT`: one word, not after `--`, in the older form."""
    return ns.name is not None and len(ns.command) == 1 and not ns.marked


def _reads_script(ns: argparse.Namespace) -> bool:
    return ns.script == "-" or (ns.script is None and _script_form(ns) and ns.command == ["-"])


def _guest_argv(ns: argparse.Namespace) -> list[str]:
    if ns.script is not None:
        if ns.command:
            raise InvalidInputError(
                f"-c SCRIPT takes no COMMAND (got {' '.join(ns.command)!r}): give one of the two"
            )
        return ["/bin/sh", "-c", ns.script]
    if _script_form(ns):
        return ["/bin/sh", "-c", ns.command[0]]
    if not ns.command:
        raise InvalidInputError("exec needs a COMMAND after NAME (or -c SCRIPT)")
    return list(ns.command)
