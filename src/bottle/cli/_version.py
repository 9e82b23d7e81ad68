"""`bottle --version`: bottle's version, the relay in use, and the smolvm found.

What cannot be had is said, never raised: a missing or broken smolvm is a line of the report,
and the status stays 0.
"""

from __future__ import annotations

import os

from bottle import __version__
from bottle.cli._errors import PROG


def report() -> str:
    """The lines `bottle --version` prints."""
    return f"{PROG} {__version__}\nrelay: {_relay()}\nsmolvm: {_smolvm()}\n"


def _relay() -> str:
    try:
        from bottle.relay._impl import IMPLEMENTATION, core
    except ImportError as exc:  # BOTTLE_REQUIRE_EXTENSION without the extension, say
        return f"none ({exc})"
    if IMPLEMENTATION == "native":
        return f"native ({core.__name__})"
    if os.environ.get("BOTTLE_NO_EXTENSIONS", "") not in ("", "0"):
        return "pure (BOTTLE_NO_EXTENSIONS is set)"
    return "pure (the native relay bottle._ptyrelay is not built)"


def _smolvm() -> str:
    from bottle import smolvm as sv
    from bottle.errors import BottleError, SmolvmVersionError

    try:
        path = sv.find_executable()
    except (BottleError, OSError) as exc:
        return f"not found ({exc})"
    try:
        version = sv.read_version(path)
    except SmolvmVersionError as exc:
        return f"version unknown ({exc}) at {path}"
    except (BottleError, OSError) as exc:
        return f"cannot be run ({exc})"
    text = ".".join(map(str, version))
    if version < sv.MIN_VERSION:
        needed = ".".join(map(str, sv.MIN_VERSION))
        return f"{text} at {path} (too old: bottle needs {needed} or later)"
    return f"{text} at {path}"
