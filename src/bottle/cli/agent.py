"""`bottle agent`: run the agent in an existing, running machine (nothing created or removed)."""

from __future__ import annotations

import argparse

from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._agent import add_agent_options, check_record, run_session
from bottle.cli._command import SECRETS_NOTE, Command, Parser
from bottle.cli._options import add_name
from bottle.cli._secrets import from_environment


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
        spec = LaunchSpec(
            machine_name=ns.name,
            env=dict(ns.env),
            secret_env=from_environment(ns.secret_env),
            agent_provider=ns.provider,
            agent_command=ns.agent_command,
            prompt_mode=ns.prompt_mode,
            workdir=ns.workdir,
            agent_user=ns.user,
            terminal_title=ns.title,
            terminal_color=ns.color,
        )
        with SmolmachinesBottle.from_spec(spec, prompt_path=ns.prompt_path) as bottle:
            return run_session(bottle, ns, extra)
