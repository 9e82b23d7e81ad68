"""An interactive agent session with a window change, end to end.

The test plays the user's terminal; `exec_agent(tty=True)` (or `bottle agent`) runs the fake
smolvm's `exec -i -t` in process through the relay; the guest shell reports the size it sees at
start and again on SIGWINCH. Resizing the user's terminal must travel: kernel SIGWINCH → relay →
TIOCSWINSZ on the relay's pty → smolvm re-reads its stdin's size → the guest pty → the guest.
"""

from __future__ import annotations

import fcntl
import re
import struct
import termios
from pathlib import Path
from typing import Any

import pytest
from harness.backend import agent_session, image_machine
from harness.terminal import user_terminal, wait_status, wait_until

IMPLEMENTATIONS = {
    "native": {"BOTTLE_REQUIRE_EXTENSION": "1"},
    "pure": {"BOTTLE_NO_EXTENSIONS": "1"},
}

# The guest: its size at start, then its size after each window change, until told to stop.
GUEST = (
    "trap 'echo \"WINCH $(stty size)\"' WINCH; "
    'echo "START $(stty size)"; '
    "while [ ! -e {done} ]; do sleep 0.05; done; exit 7"
)

pytestmark = pytest.mark.usefixtures("test_images")



@pytest.mark.parametrize("route", ["api", "cli"])
@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_window_change_reaches_the_guest(
    fake_smolvm: Any, shared_dir: Path, impl: str, route: str
) -> None:
    image_machine(fake_smolvm, "m1")
    done = shared_dir / "done"
    argv, env = agent_session(route, "m1", GUEST.format(done=done))
    env.pop("BOTTLE_NO_EXTENSIONS", None)
    env.pop("BOTTLE_REQUIRE_EXTENSION", None)
    env.update(IMPLEMENTATIONS[impl])
    with user_terminal(rows=30, cols=100) as term:
        proc = term.spawn(argv, env)
        try:
            # The guest's pty starts at 80x24 (smolvm's agent opens it so) and gets the size smolvm
            # read from its stdin once the command has started: the guest sees 30x100 at its
            # start, or as its first window change when it was quicker than that.
            assert wait_until(lambda: re.search(rb"(START|WINCH) 30 100", term.output()), 60), (
                term.output()
            )
            # smolvm reads its size once at start; everything after must come as SIGWINCH.
            fcntl.ioctl(term.master, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 140, 0, 0))
            term.expect(b"WINCH 45 140")
            fcntl.ioctl(term.master, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 70, 0, 0))
            term.expect(b"WINCH 20 70")
            done.touch()
            status = wait_status(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out = term.settle()
        assert status == 7, out
        if route == "api":
            assert b"RESULT=STATUS:7" in out, out
        term.assert_restored()
    # The sizes went through smolvm's -i -t client, not around it.
    execs = [c for c in fake_smolvm.calls() if c[1:2] == ["exec"]]
    assert execs and "-t" in execs[-1][: execs[-1].index("--")], execs
