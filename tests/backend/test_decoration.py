"""Terminal decoration: hostile titles are stripped, colours validated, the script form exits
with the command's status and always restores the terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bottle.backend import terminal
from bottle.errors import InvalidInputError

ESC = "\x1b"
BEL = "\x07"

HOSTILE = [
    "\x1b]0;owned\x07",
    "a\x1b[2Jb",
    "bell\x07",
    "c1 csi \x9b2J and osc \x9d0;x\x9c",
    "nul\0byte",
    "new\nline\r\n",
    "para\u2029sep\u2028",
    "del\x7f",
    "\x1bP+q\x1b\\",
]


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_titles_are_stripped(title: str) -> None:
    clean = terminal.sanitize_title(title)
    assert all(unicodedata.category(ch) not in ("Cc", "Zl", "Zp") for ch in clean)
    deco = terminal.decoration(title=title)
    assert deco is not None
    # Exactly our sequences: push-title CSI and the OSC 0 introducer, ended by one BEL.
    assert deco.start == f"{ESC}[22;0t{ESC}]0;{clean}{BEL}"
    assert deco.start.count(ESC) == 2
    assert deco.start.count(BEL) == 1
    assert deco.reset == f"{ESC}[23;0t"


def test_visible_text_is_kept() -> None:
    assert terminal.sanitize_title("  my project: ünï ✓  ") == "my project: ünï ✓"
    assert terminal.sanitize_title("a\x1b[31mred") == "a[31mred"
    assert len(terminal.sanitize_title("x" * 1000)) == terminal.TITLE_MAX


@settings(max_examples=300)
@given(st.text())
def test_no_title_can_emit_an_escape_sequence(title: str) -> None:
    deco = terminal.decoration(title=title)
    if deco is None:
        assert terminal.sanitize_title(title) == ""
        return
    body = deco.start[len(f"{ESC}[22;0t{ESC}]0;") : -1]
    assert ESC not in body
    assert BEL not in body
    assert all(unicodedata.category(ch) != "Cc" for ch in body)


@pytest.mark.parametrize("color", ["#abc", "#A0B1C2", "red", "DarkSlateGray4", "gray50"])
def test_valid_colours(color: str) -> None:
    deco = terminal.decoration(color=color)
    assert deco == terminal.Decoration(f"{ESC}]11;{color}{BEL}", f"{ESC}]111{BEL}")


@pytest.mark.parametrize(
    "color",
    ["#ab", "#abcd", "#gggggg", "red\x07", "red\x1b\\", "rgb:1/2/3", "9red", "light blue", "\0",
     "red\n", "#fff;", "x" * 41],
)  # fmt: skip
def test_bad_colours_are_refused(color: str) -> None:
    with pytest.raises(InvalidInputError, match="colour"):
        terminal.decoration(color=color)
    with pytest.raises(ValueError, match="colour"):
        terminal.exec_shell_script(["true"], "t", color)
    with pytest.raises(ValueError, match="colour"):
        terminal.exec_shell_argv(["true"], "t", color)


def test_nothing_to_decorate() -> None:
    assert terminal.decoration() is None
    assert terminal.decoration(title="\x1b\x07\n") is None
    assert terminal.exec_shell_script(["true"], "", "") is None
    assert terminal.exec_shell_argv(["true"], "", "") is None


def test_both_title_and_colour() -> None:
    deco = terminal.decoration("t", "#123")
    assert deco is not None
    assert deco.start == f"{ESC}[22;0t{ESC}]0;t{BEL}{ESC}]11;#123{BEL}"
    # Undone in reverse order.
    assert deco.reset == f"{ESC}]111{BEL}{ESC}[23;0t"


# --- the script form, run for real -------------------------------------------------------


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, check=False, timeout=30, **kw)


def _script(argv: list[str], title: str, color: str) -> list[str]:
    """The drop-in form: the caller runs `["sh", "-c", exec_shell_script(...)]`."""
    script = terminal.exec_shell_script(argv, title, color)
    assert isinstance(script, str)
    return ["sh", "-c", script]


def _argv(argv: list[str], title: str, color: str) -> list[str]:
    full = terminal.exec_shell_argv(argv, title, color)
    assert full is not None
    return full


FORMS = pytest.mark.parametrize("form", [_script, _argv], ids=["script", "argv"])


def test_script_form_shape_is_one_string_for_sh_c_never_login() -> None:
    script = terminal.exec_shell_script(["prog", "a b"], "T", "")
    assert isinstance(script, str)
    assert script.endswith('exit "$s"')
    assert "prog 'a b'" in script
    argv = terminal.exec_shell_argv(["prog", "a b"], "T", "")
    assert argv is not None
    assert argv[:2] == ["sh", "-c"]
    assert "-l" not in argv[:3]
    assert argv[-2:] == ["prog", "a b"]


@FORMS
@pytest.mark.parametrize("status", [0, 1, 7, 255])
def test_script_form_exits_with_the_commands_status(form: Any, status: int) -> None:
    argv = form(["sh", "-c", f"echo hi; exit {status}"], "T", "blue")
    proc = _run(argv)
    deco = terminal.decoration("T", "blue")
    assert deco is not None
    assert proc.returncode == status
    assert proc.stdout == (deco.start + "hi\n" + deco.reset).encode()


@FORMS
def test_script_form_keeps_arguments_and_callers_path(form: Any, tmp_path: Path) -> None:
    tool = tmp_path / "only-here"
    tool.write_text('#!/bin/sh\nprintf "[%s]" "$@"\n')
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    args = ["only-here", "a b", "$x", "", "'", "$(touch pwned)", "`touch pwned`", "a;b|c", "\n"]
    proc = _run(form(args, "T", ""), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = "".join(f"[{a}]" for a in args[1:])
    assert proc.stdout == f"{ESC}[22;0t{ESC}]0;T{BEL}{shown}{ESC}[23;0t".encode()
    assert not (tmp_path / "pwned").exists()


@FORMS
def test_script_form_missing_command_still_resets(form: Any) -> None:
    proc = _run(form(["no-such-program-xyz"], "T", ""))
    assert proc.returncode == 127
    assert proc.stdout.endswith(f"{ESC}[23;0t".encode())


@FORMS
def test_script_form_ctrl_c_restores_and_reports_the_signal(form: Any, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    argv = form(["sh", "-c", f"touch {ready}; exec sleep 30"], "T", "")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # A terminal's Ctrl-C goes to the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT
    assert out.endswith(f"{ESC}[23;0t".encode())
