"""`bottle attach`: connect this terminal to a detached session; detach with Ctrl-P Ctrl-Q."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bottle import sessions
from bottle.backend.terminal import decoration
from bottle.cli._command import Command, Parser
from bottle.cli._errors import FAILURE, PROG, did_you_mean
from bottle.cli._sessions import settle
from bottle.cli._stderr import CONSOLE
from bottle.errors import SessionEndedError, SessionError, SessionNotFoundError


class Attach(Command):
    description = (
        "Connect this terminal to a detached session: its output so far, then keys in and "
        "output out. Ctrl-P Ctrl-Q detaches (the session runs on); so does closing the "
        "terminal. When the session ends, exit with its status."
    )
    usage = "%(prog)s [--read-only] [--detach-keys KEYS] SESSION"

    def configure(self, parser: Parser) -> None:
        parser.add_argument(
            "session", metavar="SESSION", help="the session's name (see bottle sessions)"
        )
        parser.add_argument(
            "--read-only",
            action="store_true",
            help="watch: see the output, type nothing (but the detach keys), never resize it",
        )
        parser.add_argument(
            "--detach-keys",
            metavar="KEYS",
            default="ctrl-p,ctrl-q",
            help="the keys that detach, docker's way: comma-separated characters or ctrl-X "
            "(default: ctrl-p,ctrl-q; '' for none)",
        )

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        settle()
        sessions.parse_detach_keys(ns.detach_keys)  # bad keys: refused before anything else
        try:
            session = sessions.find_session(ns.session)
        except SessionNotFoundError as exc:
            names = [info.name for info in sessions.list_sessions()]
            raise SessionNotFoundError(f"{exc}{did_you_mean(ns.session, names)}") from None
        deco = decoration(session.terminal_title, session.terminal_color)
        try:
            result = sessions.attach(
                session, readonly=ns.read_only, detach_keys=ns.detach_keys, decoration=deco
            )
        except SessionEndedError as exc:
            return _ended(session, exc)
        name = session.name
        if result.ended == "exited":
            assert result.status is not None
            CONSOLE.print(f"{PROG}: session {name!r} exited with status {result.status}")
            return result.status
        if result.ended == "detached":
            CONSOLE.print(
                f"{PROG}: detached from session {name!r}; it runs on ({PROG} attach {name})"
            )
            return 0
        if result.ended == "signal":
            assert result.signal is not None
            what = signal.Signals(result.signal).name
            CONSOLE.print(f"{PROG}: {what}: detached from session {name!r}; it runs on")
            return 128 + result.signal
        if result.ended == "hangup":
            return 128 + signal.SIGHUP
        if result.ended == "lost":
            settle()
            raise SessionError(f"session {name!r} was lost: its holder died")
        raise SessionError(f"session {name!r}: {result.message}")


def _ended(session: sessions.Session, exc: SessionEndedError) -> int:
    """An ended session: its last output, then its status (or why there is none)."""
    if exc.screen:
        out = sys.stdout.buffer
        out.write(exc.screen)
        if not exc.screen.endswith(b"\n") and os.isatty(1):
            out.write(b"\r\n")
        out.flush()
    if exc.status is None:
        settle()
        CONSOLE.print(f"{PROG}: error: session {session.name!r} was lost: its holder died")
        return FAILURE
    CONSOLE.print(f"{PROG}: session {session.name!r} exited with status {exc.status}")
    return exc.status
