"""The relays under test and how each is started: bottle's loops, script(1), pty.spawn, none."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

RELAY_NAMES = ("native", "recorded", "direct", "pure", "script", "pty.spawn", "none")

# In a relay's options, replaced by a fresh file name in a scratch directory on disk (not
# tmpfs: a recording is real disk I/O), removed when the process exits.
RECORD_FILE = "{record-file}"
_record_dir: tempfile.TemporaryDirectory[str] | None = None


def _new_record_file() -> str:
    global _record_dir
    if _record_dir is None:
        _record_dir = tempfile.TemporaryDirectory(prefix="bottle-bench-record-")
    return os.path.join(_record_dir.name, f"{uuid.uuid4().hex}.cast")

PTY_SPAWN_RUNNER = (
    "import os, pty, sys\n"
    "code = os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:]))\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)

# The resize child blocks SIGWINCH and takes it with sigwait(), so its reaction is one syscall,


@dataclass(frozen=True)
class Relay:
    """One way of putting a child on a terminal: a relay, a peer, or none at all."""

    name: str
    description: str
    env: tuple[tuple[str, str], ...] = ()
    # For bottle's own relay: which implementation must run, and the options it gets.
    implementation: str | None = None
    options: tuple[str, ...] = ()
    # The interpreter that runs bottle.relay: this one, or another checkout's (see baseline).
    python: str | None = None

    def argv(self, child: Sequence[str]) -> list[str]:
        """Return the argv that runs ``child`` through this relay."""
        if self.implementation is not None:
            options = [_new_record_file() if o == RECORD_FILE else o for o in self.options]
            return [self.python or sys.executable, "-m", "bottle.relay", *options, "--", *child]
        if self.name == "script":
            # script hands its command to $SHELL -c; exec keeps the same process tree depth.
            return ["script", "-q", "-e", "-f", "-c", "exec " + shlex.join(child), "/dev/null"]
        if self.name == "pty.spawn":
            return [sys.executable, "-c", PTY_SPAWN_RUNNER, *child]
        return list(child)

    @property
    def is_relay(self) -> bool:
        """Whether a relay process sits between the child and the outer terminal."""
        return self.name != "none"


_NATIVE_ENV = (("BOTTLE_REQUIRE_EXTENSION", "1"),)

RELAYS: dict[str, Relay] = {
    "native": Relay("native", "bottle relay, native loop (copy mode)", _NATIVE_ENV, "native"),
    "recorded": Relay(
        "recorded",
        "bottle relay, native loop (copy mode), recording with --record FILE.cast",
        _NATIVE_ENV,
        "native",
        ("--record", RECORD_FILE),
    ),
    "direct": Relay(
        "direct",
        "bottle relay, native loop, --output direct",
        _NATIVE_ENV,
        "native",
        ("--output", "direct"),
    ),
    "pure": Relay(
        "pure",
        "bottle relay, pure-Python twin (copy mode)",
        (("BOTTLE_NO_EXTENSIONS", "1"),),
        "pure",
    ),
    "script": Relay("script", "util-linux script -q -e -f -c CMD /dev/null"),
    "pty.spawn": Relay("pty.spawn", "Python's pty.spawn"),
    "none": Relay("none", "no relay: the child straight on the outer terminal"),
}


def baseline(name: str, python: str) -> Relay:
    """bottle's native relay in copy mode as another install has it (``python``: for instance
    another checkout's .venv/bin/python), to measure beside this one: a speed change is judged
    interleaved against the tree before it."""
    return Relay(
        name,
        f"bottle relay, native loop (copy mode), run by {python}",
        _NATIVE_ENV,
        "native",
        python=python,
    )


def parse_baseline(spec: str) -> Relay:
    """The baseline that a command line's ``--baseline NAME=PYTHON`` names (ValueError if bad)."""
    name, sep, python = spec.partition("=")
    if not sep or not name or not python:
        raise ValueError(f"--baseline takes NAME=PYTHON, got {spec!r}")
    return baseline(name, python)


def base_env(relay: Relay) -> dict[str, str]:
    """Return the environment a relay runs with (the caller's, minus bottle's switches)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BOTTLE_NO_EXTENSIONS", "BOTTLE_REQUIRE_EXTENSION")
    }
    env["SHELL"] = "/bin/sh"
    env.update(relay.env)
    return env


def unavailable_reason(relay: Relay) -> str | None:
    """Return why ``relay`` cannot run here, or None when it can."""
    if relay.implementation is not None:
        python = relay.python or sys.executable
        if not os.access(python, os.X_OK):
            return f"{python} is not an executable interpreter"
        probe = subprocess.run(
            [python, "-c", "import bottle.relay as r; print(r.IMPLEMENTATION)"],
            env=base_env(relay),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        got = probe.stdout.strip()
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            return f"bottle.relay does not import with {dict(relay.env)}: {last}"
        if got != relay.implementation:
            return f"bottle.relay runs the {got!r} implementation, not {relay.implementation!r}"
        return None
    if relay.name == "script":
        exe = shutil.which("script")
        if exe is None:
            return "script(1) is not installed (util-linux/bsdutils)"
        ver = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        if "util-linux" not in ver.stdout + ver.stderr:
            return f"{exe} is not util-linux script (needs -q -e -f -c)"
        return None
    return None
