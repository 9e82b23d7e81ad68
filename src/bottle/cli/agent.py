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
from bottle.cli._options import add_name, retry_policy
from bottle.cli._sessions import settle


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
        settle()
        spec = LaunchSpec(machine_name=ns.name, prompt_mode=ns.prompt_mode, **session_fields(ns))
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
