"""`bottle sessions`: list detached sessions (`ls`, the default) and forget ended ones (`rm`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from bottle import sessions
from bottle.cli._command import Command, Parser
from bottle.cli._errors import FAILURE, PROG, describe
from bottle.cli._sessions import settle
from bottle.cli._stderr import CONSOLE
from bottle.errors import BottleError, InvalidInputError, SessionRunningError

_COLUMNS = ("NAME", "MACHINE", "STARTED", "STATE", "CLIENTS", "STATUS")


class Sessions(Command):
    description = (
        "List this user's detached sessions: name, machine, when started, state (running, "
        "exited, lost), attached clients (writers+watchers) and exit status once it ended. "
        "`rm NAME...` forgets ended sessions (a launched session's machine is torn down "
        "first if that is still owed); `rm -f` ends running ones first (their program gets "
        f"SIGTERM; its holder is killed if it still runs {sessions.END_GRACE:g} s later)."
    )
    usage = "%(prog)s [ls] [--json]\n       %(prog)s rm [-f] NAME [NAME...]"

    def configure(self, parser: Parser) -> None:
        parser.add_argument(
            "action", nargs="?", choices=("ls", "rm"), default="ls", help=argparse.SUPPRESS
        )
        parser.add_argument("names", nargs="*", metavar="NAME", help=argparse.SUPPRESS)
        parser.add_argument("--json", action="store_true", help="print the list as JSON")
        parser.add_argument(
            "-f", "--force", action="store_true",
            help="rm: end running sessions first (SIGTERM, then the holder killed after "
            f"{sessions.END_GRACE:g} s)",
        )  # fmt: skip

    def parse(self, parser: Parser, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
        # Options anywhere, names on both sides of them (`rm -f NAME`, `rm NAME -q`): argparse
        # would take the names as given up (empty) at the first option after the action.
        if "--" in args:
            parser.error("sessions takes no arguments after '--'")
        return parser.parse_intermixed_args(args), []

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        settle()
        if ns.action == "rm":
            if not ns.names:
                raise InvalidInputError(f"{PROG} sessions rm needs a session's name")
            return _remove(ns.names, ns.force)
        if ns.names:
            raise InvalidInputError(
                f"{PROG} sessions takes no names (to remove sessions: {PROG} sessions rm NAME)"
            )
        if ns.force:
            raise InvalidInputError(f"--force is for {PROG} sessions rm")
        found = sessions.list_sessions()
        if ns.json:
            json.dump([_as_json(info) for info in found], sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _table(found)
        return 0


def _clients(info: sessions.SessionInfo) -> str:
    if info.state != "running":
        return "-"
    return f"{info.writers}+{info.watchers}" if info.watchers else str(info.writers)


def _table(found: list[sessions.SessionInfo]) -> None:
    rows = [_COLUMNS] + [
        (
            info.name,
            info.machine or "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started)),
            info.state,
            _clients(info),
            "-" if info.exit_status is None else str(info.exit_status),
        )
        for info in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _as_json(info: sessions.SessionInfo) -> dict[str, object]:
    out = dataclasses.asdict(info)
    out["started_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(info.started))
    return out


def _remove(names: list[str], force: bool) -> int:
    """Forget each ended session (once its holder has finished tearing its machine down), and
    with ``force`` end each running one first; a running one without it (or any other
    failure) is one error line, and the others are removed all the same."""
    failed = False
    for name in names:
        try:
            session = sessions.find_session(name)
            running = force and session.running() and session.exit_status is None
            if running and session.end() is None:
                CONSOLE.print(f"{PROG}: session {name!r} still ran {sessions.END_GRACE:g} s "
                              "after SIGTERM: its holder was killed")  # fmt: skip
            if session.exit_status is not None and session.running():
                session.wait()  # its program ended: the holder is tearing its machine down
            session.remove()
        except SessionRunningError as exc:
            CONSOLE.print(f"{PROG}: error: {describe(exc)} (end it first: quit its program "
                          f"in {PROG} attach {name}, or {PROG} sessions rm -f {name})")  # fmt: skip
            failed = True
        except BottleError as exc:
            CONSOLE.print(f"{PROG}: error: {describe(exc)}")
            failed = True
        else:
            print(name)
    return FAILURE if failed else 0
