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
    session_fields,
)
from bottle.cli._command import SECRETS_NOTE, Command, Parser
from bottle.cli._options import add_name


class Agent(Command):
    description = "Run the agent in an existing, running machine. Agent arguments go after `--`."
    usage = "%(prog)s -n NAME [options] [-- AGENT_ARG...]"
    epilog = SECRETS_NOTE
    takes_extra = True

    def configure(self, parser: Parser) -> None:
        add_name(parser)
        parser.add_argument(
            "--prompt-path", help="guest path of a prompt file already in the machine"
        )
        parser.add_argument(
            "--prompt-mode", help="append_file, read_prompt_file or none (default: the provider's)"
        )
        add_agent_options(parser)

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        check_record(ns)
        spec = LaunchSpec(machine_name=ns.name, prompt_mode=ns.prompt_mode, **session_fields(ns))
        bottle = SmolmachinesBottle.from_spec(spec, prompt_path=ns.prompt_path)
        with recording(ns) as record, bottle:
            return run_session(bottle, ns, extra, record)
