"""Relay the user's terminal to a child command running on a fresh pseudo-terminal.

`run` starts the child on a new pty (a session leader with the pty as its controlling
terminal, sized like the user's terminal), copies bytes both ways until the child exits and
returns its status; `Recording` is a file it records a session into. The copy loop is the
native extension `bottle._ptyrelay` when it is built, else its pure-Python twin
`bottle._ptyrelay_py`; `IMPLEMENTATION` says which.
BOTTLE_NO_EXTENSIONS=1 forces the twin; BOTTLE_REQUIRE_EXTENSION=1 makes loading the relay
fail instead of falling back to it (setting both is an error too).

The names are loaded on first use (`from bottle.relay import run` is one): `python -m
bottle.relay` imports this package before its `__main__` can take Ctrl-C over, so the package
itself loads nothing (see `bottle._sigint`).
"""

# Understood by type checkers, False when run: the names below, without loading them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from bottle.relay._impl import IMPLEMENTATION
    from bottle.relay._recording import Recording
    from bottle.relay._session import OUTPUTS, run

__all__ = ["IMPLEMENTATION", "OUTPUTS", "Recording", "run"]


def __getattr__(name: str) -> object:
    value: object
    if name == "IMPLEMENTATION":
        from bottle.relay._impl import IMPLEMENTATION as value
    elif name == "Recording":
        from bottle.relay._recording import Recording as value
    elif name in ("OUTPUTS", "run"):
        from bottle.relay import _session

        value = getattr(_session, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups find it without coming here
    return value
