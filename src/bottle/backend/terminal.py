"""Terminal decoration for a session: a window title and a background colour.

Titles are *stripped* of control characters (C0, DEL, C1, and the Unicode line and paragraph
separators), so no caller-supplied text can ever end an escape sequence or start a new one.
Colours are *validated* and refused unless they are `#rgb`, `#rrggbb` or a plain name.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from bottle import _validate as check
from bottle.errors import InvalidInputError

__all__ = [
    "Decoration",
    "decoration",
    "exec_shell_argv",
    "exec_shell_script",
    "sanitize_title",
    "validate_color",
]

TITLE_MAX = 200
_COLOR = re.compile(r"#[0-9A-Fa-f]{3}|#[0-9A-Fa-f]{6}|[A-Za-z][A-Za-z0-9]{0,39}")

# xterm sequences: push the title stack (CSI 22;0 t), set icon+window title (OSC 0),
# pop it again (CSI 23;0 t); set the default background (OSC 11), reset it (OSC 111).
_PUSH_TITLE = "\x1b[22;0t"
_POP_TITLE = "\x1b[23;0t"
_SET_TITLE = "\x1b]0;{}\x07"
_SET_BG = "\x1b]11;{}\x07"
_RESET_BG = "\x1b]111\x07"


def sanitize_title(title: str) -> str:
    """Drop every control character from a title and cap its length."""
    if not isinstance(title, str):
        raise InvalidInputError(f"terminal title must be a string, not {type(title).__name__}")
    kept = "".join(ch for ch in title if unicodedata.category(ch) not in ("Cc", "Zl", "Zp"))
    return kept.strip()[:TITLE_MAX]


def validate_color(color: str) -> str:
    """Accept `#rgb`, `#rrggbb` or a plain colour name (letters, then letters/digits)."""
    if not isinstance(color, str) or not _COLOR.fullmatch(color):
        raise InvalidInputError(
            f"invalid terminal colour {color!r}: use #rgb, #rrggbb or a colour name"
        )
    return color


@dataclass(frozen=True)
class Decoration:
    """The bytes written before a session (`start`) and after it (`reset`)."""

    start: str
    reset: str


def decoration(title: str = "", color: str = "") -> Decoration | None:
    """Build the decoration for a title and colour; None when there is nothing to do."""
    title = sanitize_title(title) if title else ""
    color = validate_color(color) if color else ""
    start = reset = ""
    if title:
        start += _PUSH_TITLE + _SET_TITLE.format(title)
        reset += _POP_TITLE
    if color:
        start += _SET_BG.format(color)
        reset = _RESET_BG + reset
    if not start:
        return None
    return Decoration(start, reset)


# The trap gives INT/TERM/HUP a handler (not SIG_IGN, which the command would inherit) so the
# shell outlives a Ctrl-C aimed at the command, prints the reset and exits with the command's
# own status, not the status of the trailing printf.
_TRAP = "trap : INT TERM HUP; "
# The argv form: $1 = start bytes, $2 = reset bytes, then the command.
_ARGV_SCRIPT = _TRAP + 'printf %s "$1"; r=$2; shift 2; "$@"; s=$?; printf %s "$r"; exit "$s"'


def _checked(argv: Sequence[str]) -> list[str]:
    args = check.argv(argv)
    if not args:
        raise InvalidInputError("exec_shell_script: the command is empty")
    return args


def exec_shell_script(argv: Sequence[str], title: str = "", color: str = "") -> str | None:
    """A script for `sh -c` that decorates the terminal, runs `argv`, then restores it.

    Every argument and both escape strings are single-quoted, so nothing in them is ever
    expanded or interpreted. Run it as `["sh", "-c", script]` (never a login shell, so the
    caller's PATH is kept); it exits with the command's status. Returns None when there is
    nothing to decorate (run `argv` as it is).
    """
    args = _checked(argv)
    deco = decoration(title, color)
    if deco is None:
        return None
    command = " ".join(shlex.quote(arg) for arg in args)
    return (
        f"{_TRAP}printf %s {shlex.quote(deco.start)}; {command}; s=$?; "
        f'printf %s {shlex.quote(deco.reset)}; exit "$s"'
    )


def exec_shell_argv(argv: Sequence[str], title: str = "", color: str = "") -> list[str] | None:
    """`exec_shell_script` as one argv (`sh -c SCRIPT bottle-term START RESET ARGV…`).

    The command's arguments stay separate argv entries, never parsed by a shell at all.
    """
    args = _checked(argv)
    deco = decoration(title, color)
    if deco is None:
        return None
    return ["sh", "-c", _ARGV_SCRIPT, "bottle-term", deco.start, deco.reset, *args]
