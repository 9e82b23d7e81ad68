"""Smoke test of the installed package, portable to every wheel platform (macOS has no /proc)."""

import importlib.util
import os
import subprocess
import sys

import bottle.relay


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def test_relay_implementation_follows_the_environment() -> None:
    built = importlib.util.find_spec("bottle._ptyrelay") is not None
    if _flag("BOTTLE_REQUIRE_EXTENSION"):
        expected = "native"
    elif _flag("BOTTLE_NO_EXTENSIONS"):
        expected = "pure"
    else:
        expected = "native" if built else "pure"
    implementation = bottle.relay.IMPLEMENTATION
    assert implementation == expected


def test_relay_cli_runs_a_child_on_a_pty() -> None:
    script = 'test -t 0 && test -t 1 && printf "on-a-tty:%s;" "$(stty size)"; exit 7'
    proc = subprocess.run(
        [sys.executable, "-m", "bottle.relay", "--", "sh", "-c", script],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )
    assert proc.returncode == 7, proc.stderr
    assert b"on-a-tty:" in proc.stdout, proc.stdout
