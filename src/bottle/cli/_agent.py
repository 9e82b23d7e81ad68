"""What `launch` and `agent` share: the session's options, the recording check, the session."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from bottle.backend import Bottle
from bottle.cli._options import add_env
from bottle.cli._secrets import from_environment
from bottle.errors import InvalidInputError

# Loaded with the command, before Ctrl-C is handed to it (bottle._console): an import that a
# KeyboardInterrupt lands in can swallow it, and a session on a terminal needs the relay.
from bottle.relay import Recording


def add_agent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="claude", help="agent provider (default: claude)")
    p.add_argument("--agent-command", help="program to run (default: the provider's)")
    p.add_argument(
        "--workdir", help="guest directory the agent starts in (default: the user's home)"
    )
    p.add_argument("--user", default="node", help="guest user running the agent (default: node)")
    p.add_argument("--title", default="", help="terminal title for the session")
    p.add_argument("--color", default="", help="terminal background colour (#rgb, #rrggbb, name)")
    p.add_argument("--no-tty", action="store_true", help="run without a terminal (no relay)")
    p.add_argument(
        "--record",
        metavar="FILE.cast",
        help="record the session into a new file (asciicast v2, mode 0600; "
        "play it with `asciinema play FILE.cast`)",
    )
    p.add_argument(
        "--record-input",
        action="store_true",
        help="record typed input too (off by default: typed secrets would land in the file)",
    )
    add_env(p)


def session_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """The `LaunchSpec` fields that the options above give, for `launch` and `agent` alike."""
    return {
        "env": dict(ns.env),
        "secret_env": from_environment(ns.secret_env),
        "agent_provider": ns.provider,
        "agent_command": ns.agent_command,
        "workdir": ns.workdir,
        "agent_user": ns.user,
        "terminal_title": ns.title,
        "terminal_color": ns.color,
    }


def check_record(ns: argparse.Namespace) -> None:
    """Refuse recording options that cannot work together, before anything runs."""
    if ns.record is None:
        if ns.record_input:
            raise InvalidInputError("--record-input needs --record FILE.cast")
        return
    if ns.no_tty:
        raise InvalidInputError("--record needs a terminal session (drop --no-tty)")


def recording(ns: argparse.Namespace) -> AbstractContextManager[Recording | None]:
    """The --record file, made now (before any machine is touched: making it is the check that
    it can be) and removed on the way out if no session ran into it."""
    if ns.record is None:
        return nullcontext()
    return Recording(ns.record)


def run_session(
    bottle: Bottle, ns: argparse.Namespace, agent_args: list[str], record: Recording | None
) -> int:
    """Run the agent; its status, or raise what went wrong around the session."""
    result = bottle.run_agent(
        agent_args, tty=not ns.no_tty, record=record, record_input=ns.record_input
    )
    return result.check().returncode
