"""Terminal decoration for a session: a window title and a background colour.

Titles are *stripped* of control characters (C0, DEL, C1, and the Unicode line and paragraph
separators), so no caller-supplied text can ever end an escape sequence or start a new one.
Colours are *validated* and refused unless they are `#rgb`, `#rrggbb` or a plain name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from bottle.backend import _validate as check
from bottle.errors import InvalidInputError

__all__ = [
    "Decoration",
    "decoration",
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


# $1 = start bytes, $2 = reset bytes, then the command. The trap gives INT/TERM/HUP a handler
# (not SIG_IGN, which the command would inherit) so the shell outlives a Ctrl-C aimed at the
# command, prints the reset and exits with the command's own status.
_SCRIPT = (
    "trap : INT TERM HUP; "
    'printf %s "$1"; r=$2; shift 2; '
    '"$@"; s=$?; '
    'printf %s "$r"; exit "$s"'
)


def exec_shell_script(argv: Sequence[str], title: str = "", color: str = "") -> list[str] | None:
    """A single command line that decorates the terminal, runs `argv`, then restores it.

    Runs under `sh -c` (never a login shell, so the caller's PATH is kept) and exits with the
    command's status. Returns None when there is nothing to decorate (run `argv` as it is).
    """
    args = check.argv(argv)
    if not args:
        raise InvalidInputError("exec_shell_script: the command is empty")
    deco = decoration(title, color)
    if deco is None:
        return None
    return ["sh", "-c", _SCRIPT, "bottle-term", deco.start, deco.reset, *args]
