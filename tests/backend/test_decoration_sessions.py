"""Terminal output (README, "Terminal"): whatever title or colour a caller passes, the
bytes that reach the user's terminal hold no ESC, BEL, NUL or C1 control except bottle's own
fixed sequences; and bad input is reported without echoing control characters.

Sessions run on a real pty (the test reads the master) against the fake smolvm, through
`SmolmachinesBottle.exec_agent(tty=True)` (route `api`) or `bottle agent` (route `cli`).
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from harness.backend import (
    BOTTLE,
    LAUNCH,
    POP_TITLE,
    PUSH_TITLE,
    RESET_BG,
    agent_session,
    control_characters,
    image_machine,
    root_spec,
    set_bg,
    set_title,
)
from harness.terminal import user_terminal, wait_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottle import smolvm as sv
from bottle.backend.smolmachines import SmolmachinesBottle, SmolmachinesBottleBackend
from bottle.errors import InvalidInputError

GUEST = "echo guest-said-hello"

pytestmark = pytest.mark.usefixtures("test_images")


@pytest.fixture(autouse=True)
def _fresh_version_cache() -> None:
    sv.clear_version_cache()


def _session(fake_smolvm: Any, route: str, title: str = "", color: str = "") -> bytes:
    """Run one decorated session on a fresh user terminal; return every byte it received."""
    argv, env = agent_session(route, "m", GUEST, title=title, color=color)
    with user_terminal() as term:
        status = wait_status(term.spawn(argv, env))
        out = term.settle()
        term.assert_restored()
    assert status == 0, out
    assert b"guest-said-hello" in out
    return out


def _strip_once(out: bytes, seq: bytes) -> bytes:
    assert out.count(seq) == 1, f"{seq!r} expected once in {out!r}"
    return out.replace(seq, b"")


# (hostile title, the visible text bottle must keep: every control character dropped)
HOSTILE_TITLES = [
    ("\x1b]0;owned\x07", "]0;owned"),
    ("a\x1b[2Jb\x07c", "a[2Jbc"),
    ("c1 \x9b2J \x9d0;x\x9c end", "c1 2J 0;x end"),
    ("nul\0byte", "nulbyte"),
    ("new\nline\r\nx", "newlinex"),
    ("sep\u2028par\u2029x", "sepparx"),
    ("del\x7fx", "delx"),
    ("\x1bP+q\x1b\\", "P+q\\"),
    ("ünï ✓ \x1b[31mred", "ünï ✓ [31mred"),
    ("\x90\x98\x9e\x9f\x85", ""),
]


@pytest.mark.parametrize(("title", "visible"), HOSTILE_TITLES)
def test_hostile_title_reaches_the_terminal_defused(fake_smolvm: Any, title: str,
                                                    visible: str) -> None:  # fmt: skip
    image_machine(fake_smolvm, "m")
    out = _session(fake_smolvm, "api", title=title)
    if visible:
        rest = _strip_once(out, PUSH_TITLE + set_title(visible))
        rest = _strip_once(rest, POP_TITLE)
        assert out.startswith(PUSH_TITLE + set_title(visible))
    else:
        rest = out  # nothing visible left: no title sequence at all
        assert PUSH_TITLE not in out and POP_TITLE not in out
    assert control_characters(rest) == [], f"{title!r} left controls in {rest!r}"


@pytest.mark.parametrize(("title", "visible"), [t for t in HOSTILE_TITLES if "\0" not in t[0]])
def test_hostile_title_through_the_cli(fake_smolvm: Any, title: str, visible: str) -> None:
    """The same through `bottle agent --title` (argv cannot carry NUL, so that case is API
    only), with a valid colour alongside."""
    image_machine(fake_smolvm, "m")
    out = _session(fake_smolvm, "cli", title=title, color="#0a0b0c")
    start = (PUSH_TITLE + set_title(visible) if visible else b"") + set_bg("#0a0b0c")
    reset = RESET_BG + (POP_TITLE if visible else b"")
    assert out.startswith(start), out
    rest = _strip_once(_strip_once(out, start), reset)
    assert control_characters(rest) == [], f"{title!r} left controls in {rest!r}"


_OUR_START = re.compile(rb"\A\x1b\[22;0t\x1b\]0;([^\x07]*)\x07")


# Slow step only: test_hostile_title_reaches_the_terminal_defused runs sessions with fixed
# hostile titles, and test_decoration.py checks every title (hypothesis) on the pure function.
@pytest.mark.slow
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(title=st.text(alphabet=st.characters(codec="utf-8"), max_size=30).map(
    lambda t: t + "\x1b]0;x\x07\x9b"  # every example carries some hostile controls
))
def test_any_title_only_ever_emits_bottles_sequences(fake_smolvm: Any, title: str) -> None:
    """Property: OSC 0 with a control-free body at the start, one pop at the end, and no other
    control character anywhere (the fake machine is shared by the examples; it stays running)."""
    if fake_smolvm.machine("m") is None:
        image_machine(fake_smolvm, "m")
    out = _session(fake_smolvm, "api", title=title)
    m = _OUR_START.match(out)
    assert m is not None, f"output does not start with bottle's title sequence: {out!r}"
    assert control_characters(m.group(1)) == []
    rest = _strip_once(out[m.end() :], POP_TITLE)
    assert control_characters(rest) == [], f"{title!r} left controls in {rest!r}"


@pytest.mark.parametrize("color", ["#abc", "#0a0B0c", "navy", "DarkSlateGray4"])
def test_valid_colours_are_emitted_exactly(fake_smolvm: Any, color: str) -> None:
    image_machine(fake_smolvm, "m")
    out = _session(fake_smolvm, "api", color=color)
    assert out.startswith(set_bg(color))
    rest = _strip_once(_strip_once(out, set_bg(color)), RESET_BG)
    assert control_characters(rest) == []


HOSTILE_COLORS = [
    "\x1b]11;red\x07",
    "red\x07",
    "red\x1b\\",
    "\x9b31m",
    "navy\n",
    "red;blue",
    "rgb:00/00/00",
    "#12",
    "#12345g",
    "#1234567",
    " red",
    "red\u2028",
]


@pytest.mark.parametrize("color", HOSTILE_COLORS)
def test_hostile_colour_is_refused_before_anything_runs(fake_smolvm: Any, color: str) -> None:
    """API: InvalidInputError naming the colour, from the bottle and from launch; no smolvm
    call. CLI on a terminal: one error line without a control character, exit 1, the terminal
    untouched."""
    image_machine(fake_smolvm, "m")
    with pytest.raises(InvalidInputError, match="invalid terminal colour") as info:
        SmolmachinesBottle("m", terminal_color=color)
    assert control_characters(str(info.value).encode()) == []
    with pytest.raises(InvalidInputError, match="invalid terminal colour"), \
            SmolmachinesBottleBackend().launch(root_spec(terminal_color=color)):  # fmt: skip
        pytest.fail("the body must not run")
    assert fake_smolvm.calls() == []
    argv, env = agent_session("cli", "m", GUEST, color=color)
    with user_terminal() as term:
        status = wait_status(term.spawn(argv, env))
        out = term.settle()
        term.assert_restored()
    assert status == 1
    lines = out.rstrip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(b"bottle: error: invalid terminal colour"), out
    assert control_characters(out) == [], out
    assert fake_smolvm.calls() == []


# --- error messages never echo control characters -----------------------------------------

EVIL = "x\x1b]0;pwned\x07\x9b2J"


def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*BOTTLE, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["exec", "-n", EVIL, "true"],
        ["exec", "-n", "m", "-e", f"{EVIL}=1", "true"],
        ["exec", "-n", "m", "--secret-env", EVIL, "true"],
        ["exec", "-n", "m", "-u", EVIL, "true"],
        ["agent", "-n", "m", "--workdir", EVIL],
        ["agent", "-n", "m", "--workdir", f"/{EVIL}/../x"],
        ["agent", "-n", "m", "--provider", EVIL],
        ["agent", "-n", "m", "--prompt-mode", EVIL],
        ["agent", "-n", "m", "--prompt-path", EVIL],
        ["agent", "-n", "m", "--user", EVIL],
        ["agent", "-n", "m", "--secret-env", EVIL],
        [*LAUNCH, "--backend", EVIL],
        [*LAUNCH, "--prompt-file", f"/nonexistent/{EVIL}"],
        ["cp", "-n", "m", f"/nonexistent/{EVIL}", "/x"],
        ["cp", "-n", "m", "/etc/passwd", EVIL],
        ["cp", "-n", "m", "--owner", EVIL, "/etc/passwd", "/x"],
    ],
    ids=lambda a: " ".join(w for w in a if w != EVIL and EVIL not in w)[:40],
)
def test_bad_input_errors_never_echo_control_characters(fake_smolvm: Any,
                                                        args: list[str]) -> None:  # fmt: skip
    """A host CLI may pass untrusted text to bottle; the error bottle prints for it must not
    turn that text into escape sequences on the user's terminal (it shows them escaped)."""
    image_machine(fake_smolvm, "m")
    proc = _cli(*args)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(b"bottle: error: "), proc.stderr
    assert control_characters(proc.stderr) == [], (
        f"bottle printed raw control characters from its input: {proc.stderr!r}"
    )
    assert b"\\x1b" in proc.stderr  # the offending text is shown, escaped
    assert fake_smolvm.calls() == []
