"""What `launch` and `agent` share: the session's options, the recording check, the session."""

from __future__ import annotations

import argparse
import shlex
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from bottle.backend import Bottle
from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._errors import PROG
from bottle.cli._options import add_env, add_retry
from bottle.cli._secrets import from_environment
from bottle.cli._stderr import CONSOLE
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
        "--install-agent",
        action="store_true",
        help="install the provider's CLI first, as root (npm: @anthropic-ai/claude-code, "
        "@openai/codex), for an image that lacks it",
    )
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
    p.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="run the agent in a detached session and return at once, printing its name "
        "(bottle attach NAME to connect to it)",
    )
    p.add_argument(
        "--session",
        metavar="NAME",
        help="with --detach: the session's name (default: the machine's, made unique)",
    )
    add_env(p)
    add_retry(p)


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
        "install_agent": ns.install_agent,
    }


def check_record(ns: argparse.Namespace) -> None:
    """Refuse session options that cannot work together, before anything runs."""
    if ns.detach and ns.no_tty:
        raise InvalidInputError("--detach needs a terminal session (drop --no-tty)")
    if ns.session is not None and not ns.detach:
        raise InvalidInputError("--session names a detached session: give --detach too")
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


def said_where(record: Recording | None, *, detached: bool = False) -> None:
    """Tell where the recording went, once the command is done with it (a detached session's
    holder goes on recording into it)."""
    if record is not None and record.used:
        path = shlex.quote(record.path)
        if detached:
            CONSOLE.print(f"{PROG}: the session records into {path} as it runs (play it with: "
                          f"asciinema play {path})")  # fmt: skip
            return
        print(
            f"{PROG}: recorded the session in {path} (play it with: asciinema play {path})",
            file=sys.stderr,
        )


def run_session(
    bottle: Bottle, ns: argparse.Namespace, agent_args: list[str], record: Recording | None
) -> int:
    """Run the agent; its status, or raise what went wrong around the session. Detached:
    start it, print its name, return 0."""
    if ns.detach:
        if not isinstance(bottle, SmolmachinesBottle):
            raise InvalidInputError(f"--detach: the {type(bottle).__name__} backend has none")
        session = bottle.run_agent(
            agent_args, record=record, record_input=ns.record_input, detach=True,
            session=ns.session,
        )  # fmt: skip
        print(session.name, flush=True)
        if not ns.quiet:
            CONSOLE.print(f"bottle: session {session.name!r} runs detached: bottle attach "
                  f"{session.name}")  # fmt: skip
        return 0
    result = bottle.run_agent(
        agent_args, tty=not ns.no_tty, record=record, record_input=ns.record_input
    )
    return result.check().returncode
