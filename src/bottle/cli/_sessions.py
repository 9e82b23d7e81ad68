"""What the session commands share: the teardown a dead holder left, done by whoever notices."""

from __future__ import annotations

import logging

from bottle import sessions
from bottle.cli._errors import PROG
from bottle.cli._stderr import CONSOLE
from bottle.errors import SessionError

log = logging.getLogger("bottle.cli")


def settle() -> None:
    """Stop and delete the machines of launched sessions whose holder died (`bottle.sessions.
    tear_down_lost`), one line each on stderr. The commands that touch sessions or machines
    call it first; a session directory that cannot be read is left to the command's own
    error, if it has one."""
    try:
        done = sessions.tear_down_lost()
    except SessionError as exc:
        log.debug("looking for lost sessions: %s", exc)
        return
    for info, outcome in done:
        what = f"session {info.name!r} was lost (its holder died)"
        if outcome == "done":
            CONSOLE.print(f"{PROG}: {what}: its machine {info.machine!r} is stopped and deleted")
        else:
            CONSOLE.print(f"{PROG}: {what}: tearing its machine {info.machine!r} down {outcome}")
