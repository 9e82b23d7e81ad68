"""`bottle agent`: run the agent in an existing, running machine (nothing created or removed)."""

from __future__ import annotations

import argparse

from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._agent import (
    add_agent_options,
    check_record,
    recording,
    run_session,
    said_where,
    session_fields,
)
from bottle.cli._command import SECRETS_NOTE, Command, Parser
from bottle.cli._errors import PROG
from bottle.cli._options import retry_policy
from bottle.cli._sessions import settle
from bottle.errors import InvalidInputError


class Agent(Command):
    description = (
        "Run the agent in machine NAME, an existing, running one. Agent arguments go after "
        "`--`. `-n NAME` is the older form of NAME."
    )
    usage = (
        "%(prog)s [options] NAME [-- AGENT_ARG...]\n"
        "       %(prog)s -n NAME [options] [-- AGENT_ARG...]"
    )
    epilog = SECRETS_NOTE
    takes_extra = True

    def configure(self, parser: Parser) -> None:
        parser.add_argument("machine", metavar="NAME", nargs="?", help="machine name")
        parser.add_argument("-n", "--name", help="machine name, the older form")
        parser.add_argument(
            "--prompt-path", help="guest path of a prompt file already in the machine"
        )
        parser.add_argument(
            "--prompt-mode", help="append_file, read_prompt_file or none (default: the provider's)"
        )
        add_agent_options(parser)

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        if ns.machine is not None and ns.name is not None:
            raise InvalidInputError(
                f"the machine is given twice ({ns.machine!r} and -n {ns.name!r}): give NAME once"
            )
        name = ns.machine if ns.machine is not None else ns.name
        if name is None:
            raise InvalidInputError(f"{PROG} agent needs the machine's NAME")
        check_record(ns)
        settle()
        spec = LaunchSpec(machine_name=name, prompt_mode=ns.prompt_mode, **session_fields(ns))
        bottle = SmolmachinesBottle.from_spec(
            spec, prompt_path=ns.prompt_path, retry=retry_policy(ns)
        )
        with recording(ns) as record, bottle:
            try:
                if ns.install_agent:
                    bottle.install_agent()
                return run_session(bottle, ns, extra, record)
            finally:
                said_where(record, detached=ns.detach)
