"""Relay the user's terminal to a child command running on a fresh pseudo-terminal.

`run` starts the child on a new pty (a session leader with the pty as its controlling
terminal, sized like the user's terminal), copies bytes both ways until the child exits and
returns its status; `Recording` is a file it records a session into. The copy loop is the
native extension `bottle._ptyrelay` when it is built, else its pure-Python twin
`bottle._ptyrelay_py`; `IMPLEMENTATION` says which.
BOTTLE_NO_EXTENSIONS=1 forces the twin; BOTTLE_REQUIRE_EXTENSION=1 makes this import fail
instead of falling back to it (setting both is an error too).
"""

from __future__ import annotations

from bottle.relay._impl import IMPLEMENTATION
from bottle.relay._recording import Recording
from bottle.relay._session import OUTPUTS, run

__all__ = ["IMPLEMENTATION", "OUTPUTS", "Recording", "run"]
