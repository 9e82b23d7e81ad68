"""End to end: `bottle attach` in tmux windows as the user's terminals, native and pure, with the
terminal handed to the holder (direct, what `bottle attach` does on a terminal) and kept in the
client (framed, `sessions.attach(direct=False)`).

Start a session, attach, type, detach by key, lose the terminal (tmux closes the window: the
client is hung up) and attach again from another window of another size with the program still
running and the screen right (vim, full screen); two writers and a read-only watcher; a stop and
`fg`; a signal; the holder killed outright under a launched agent (through the fake smolvm).
Every way out leaves the terminal's settings exactly as they were (`stty -g` before and after).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.relay import MARK_VAR, PY, alive, marked_pids
from harness.sessions import Client, Sessions, kill_holder, wait_for, wait_gone
from harness.tmux import TmuxServer

from bottle import sessions

pytestmark = pytest.mark.timeout(120)

# A client kept in its own process (framed): what `bottle attach` does where it cannot hand
# its terminal over, through the same API.
FRAMED = """
import sys
from bottle import sessions
name, *options = sys.argv[1:]
r = sessions.attach(name, direct=False, readonly="--read-only" in options)
print(f"\\r\\nframed client: {r.ended} {r.status}", flush=True)
sys.exit(r.status if r.ended == "exited" else 128 + r.signal if r.signal else 0)
"""

# vim without terminal queries (their answers would come back as keys).
VIM_ARGS = ["--cmd", "set t_u7= t_RV= t_RF= t_RB= t_RS= t_RC=", "-u", "NONE", "-N", "-n",
            "-i", "NONE"]  # fmt: skip


@pytest.fixture(params=["direct", "framed"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tmux(holders: Sessions, tmp_path: Path) -> Iterator[TmuxServer]:
    env = holders.env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    server = TmuxServer(env, holders.mark, tmp_path)
    try:
        yield server
    finally:
        server.close()


def attach_command(t: TmuxServer, session: str, mode: str, *options: str) -> str:
    """The command line that attaches (one line: a shell may be typing it)."""
    if mode == "direct":
        return shlex.join(["bottle", "attach", *options, session])
    driver = t.tmp / "attach_framed.py"
    driver.write_text(FRAMED)
    return shlex.join([PY, str(driver), session, *options])


def attach(t: TmuxServer, window: str, session: str, mode: str, *options: str) -> str:
    """The window's command: attach, with the terminal's settings saved before and after."""
    command = attach_command(t, session, mode, *options)
    before, after = (shlex.quote(str(t.tmp / f"{window}.{w}")) for w in ("before", "after"))
    return f"(stty -g > {before}; {command}; s=$?; stty -g > {after}; exit $s)"


def same_settings(t: TmuxServer, window: str) -> None:
    before, after = ((t.tmp / f"{window}.{w}").read_text() for w in ("before", "after"))
    assert before == after


def written(path: Path) -> bool:
    """Whether stty's line is in ``path`` (the shell creates the file before stty writes)."""
    return path.exists() and path.read_text().endswith("\n")


def clients_in(t: TmuxServer) -> list[int]:
    """The attach clients running in tmux's windows."""
    found = []
    for pid in marked_pids(t.mark):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"attach" in cmd and b"sleep" not in cmd:
            found.append(pid)
    return found


def test_type_detach_lose_the_terminal_and_attach_again(
    holders: Sessions, tmux: TmuxServer, mode: str
) -> None:
    holders.start(name="work", size=(24, 80), env_extra={"PROG_STATUS": "5"})
    tmux.window("a", attach(tmux, "a", "work", mode), size=(30, 100))
    tmux.wait_screen("a", lambda x: "S30x100;" in x, "the program's size, the window's")
    tmux.type("a", "abc")
    tmux.wait_screen("a", lambda x: "KaKbKc" in x, "the program's echo")
    tmux.keys("a", "C-p", "C-q")
    assert tmux.status("a") == "0"
    same_settings(tmux, "a")
    if mode == "direct":
        assert "detached from session 'work'; it runs on" in tmux.screen("a")
    wait_for(lambda: sessions.find_session("work").info().clients == 0, "the client to leave")
    # Again, and this time the terminal is lost: the client only detaches.
    tmux.window("b", attach(tmux, "b", "work", mode), size=(30, 100))
    tmux.wait_screen("b", lambda x: "KaKbKc" in x, "the output so far")
    tmux.type("b", "d")
    tmux.wait_screen("b", lambda x: "Kd" in x, "the echo")
    (client,) = clients_in(tmux)
    tmux.kill("b")
    wait_gone(client)
    wait_for(lambda: sessions.find_session("work").info().clients == 0, "the client to go")
    info = sessions.find_session("work").info()
    assert (info.state, info.exit_status) == ("running", None)
    # From a window of another size: the program takes it, and everything is there.
    tmux.window("c", attach(tmux, "c", "work", mode), size=(40, 120))
    tmux.wait_screen("c", lambda x: "KaKbKc" in x and "Kd" in x and "S40x120;" in x,
                     "the whole session, at the new size")  # fmt: skip
    tmux.type("c", "X")
    assert tmux.status("c") == "5"
    same_settings(tmux, "c")
    if mode == "direct":
        assert "session 'work' exited with status 5" in tmux.screen("c")
    assert holders.leftovers() == []


def test_a_full_screen_program_looks_right_after_attach(
    holders: Sessions, tmux: TmuxServer, mode: str, tmp_path: Path
) -> None:
    vim = require("vim")
    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {n}\n" for n in range(1, 6)))
    holders.start([vim, *VIM_ARGS, str(text)], name="vim", size=(24, 80),
                  env_extra={"TERM": "xterm-256color"})  # fmt: skip
    tmux.window("a", attach(tmux, "a", "vim", mode), size=(30, 100))
    tmux.wait_screen("a", lambda x: "line 5" in x, "vim's buffer")
    tmux.type("a", "Goadded in a")
    tmux.keys("a", "Escape")
    tmux.wait_screen("a", lambda x: "added in a" in x, "the new line")
    tmux.kill("a")  # lost mid-session
    tmux.window("b", attach(tmux, "b", "vim", mode), size=(40, 120))

    def vim_screen(screen: str) -> bool:
        rows = [row.rstrip() for row in screen.split("\n")[:40]]
        text_rows = [f"line {n}" for n in range(1, 6)] + ["added in a"]
        return rows[:6] == text_rows and rows[6:39] == ["~"] * 33

    tmux.wait_screen("b", vim_screen, "vim's whole screen, drawn at 40x120")
    tmux.keys("b", "Escape")
    tmux.type("b", ":echo 'VIM' &lines &columns")
    tmux.keys("b", "Enter")
    tmux.wait_screen("b", lambda x: "VIM 40 120" in x, "vim's own idea of its size")
    tmux.type("b", ":wq")
    tmux.keys("b", "Enter")
    assert tmux.status("b") == "0"
    same_settings(tmux, "b")
    assert text.read_text().endswith("line 5\nadded in a\n")


def test_two_writers_and_a_watcher(holders: Sessions, tmux: TmuxServer, mode: str) -> None:
    holders.start(name="shared", size=(24, 80))
    tmux.window("w1", attach(tmux, "w1", "shared", mode), size=(30, 100))
    tmux.wait_screen("w1", lambda x: "S30x100;" in x, "w1's size")
    tmux.window("w2", attach(tmux, "w2", "shared", mode), size=(40, 120))
    tmux.wait_screen("w2", lambda x: "S40x120;" in x, "w2's size: the last writer to attach")
    tmux.window("r", attach(tmux, "r", "shared", mode, "--read-only"), size=(20, 60))
    tmux.wait_screen("r", lambda x: "S40x120;" in x, "the session on the watcher")
    wait_for(lambda: sessions.find_session("shared").info().watchers == 1, "the watcher")
    # Typing makes a writer the most recent: its size is the program's.
    tmux.type("w1", "a")
    for w in ("w1", "w2", "r"):
        tmux.wait_screen(w, lambda x: "S30x100;Ka" in x, "w1's size and key")
    tmux.type("r", "r")  # goes nowhere
    tmux.type("w2", "b")
    for w in ("w1", "w2", "r"):
        tmux.wait_screen(w, lambda x: "S40x120;Kb" in x, "w2's size and key")
    assert "Kr" not in tmux.screen("w1")
    listing = subprocess.run(["bottle", "sessions"], env=tmux.env, capture_output=True,
                             text=True, check=True)  # fmt: skip
    assert listing.stdout.split("\n")[1].split()[-2:] == ["2+1", "-"], listing.stdout
    tmux.keys("r", "C-p", "C-q")  # a watcher's detach keys work
    assert tmux.status("r") == "0"
    same_settings(tmux, "r")
    tmux.keys("w2", "C-p", "C-q")  # the most recent writer leaves: the other one's size
    assert tmux.status("w2") == "0"
    tmux.wait_screen("w1", lambda x: x.rstrip().endswith("S30x100;"), "w1's size again")


def test_a_stop_detaches_and_fg_attaches_again_where_it_left_off(
    holders: Sessions, tmux: TmuxServer, mode: str
) -> None:
    s = holders.start(name="job", size=(24, 80))
    bash = require("bash")
    tmux.window("a", f"PS1='prompt> ' {shlex.quote(bash)} --norc --noprofile -i",
                size=(30, 100))  # fmt: skip
    tmux.wait_screen("a", lambda x: "prompt>" in x, "the shell's prompt")
    before, after = (shlex.quote(str(tmux.tmp / f"a.{w}")) for w in ("before", "after"))
    tmux.type("a", f"stty -g > {before}")
    tmux.keys("a", "Enter")
    tmux.type("a", attach_command(tmux, "job", mode))
    tmux.keys("a", "Enter")
    tmux.wait_screen("a", lambda x: "S30x100;" in x, "the session")
    (client,) = clients_in(tmux)
    tmux.type("a", "1")
    tmux.wait_screen("a", lambda x: "K1" in x, "the echo")
    os.kill(client, signal.SIGTSTP)
    tmux.wait_screen("a", lambda x: "Stopped" in x, "the shell's word that the job stopped")
    wait_for(lambda: s.info().clients == 0, "the stopped client to detach")
    # The shell has its terminal back as it left it.
    during = shlex.quote(str(tmux.tmp / "a.during"))
    tmux.type("a", f"stty -g > {during}")
    tmux.keys("a", "Enter")
    wait_for(lambda: written(tmux.tmp / "a.during"), "the shell to run stty")
    # Meanwhile the program goes on, and nobody waits for the stopped terminal.
    other = Client.attach(s, since=sessions.wire.SINCE_NOW)
    other.keys(b"2")
    other.expect(b"K2")
    other.close()
    tmux.type("a", "fg")
    tmux.keys("a", "Enter")
    tmux.wait_screen("a", lambda x: "K1" in x and "K2" in x, "what came while it was stopped")
    tmux.type("a", "3")
    tmux.wait_screen("a", lambda x: "K3" in x, "keys again")
    screen = tmux.screen("a")
    assert screen.count("K1") == 1 and screen.count("K2") == 1  # nothing twice
    tmux.keys("a", "C-p", "C-q")
    tmux.wait_screen("a", lambda x: x.rstrip().endswith("prompt>"), "the shell again")
    tmux.type("a", f"stty -g > {after}")
    tmux.keys("a", "Enter")
    wait_for(lambda: written(tmux.tmp / "a.after"), "the shell to run stty")
    same_settings(tmux, "a")
    assert (tmux.tmp / "a.during").read_text() == (tmux.tmp / "a.before").read_text()


def test_a_signal_detaches(holders: Sessions, tmux: TmuxServer, mode: str) -> None:
    s = holders.start(name="sig", size=(24, 80))
    tmux.window("a", attach(tmux, "a", "sig", mode), size=(30, 100))
    tmux.wait_screen("a", lambda x: "S30x100;" in x, "the session")
    (client,) = clients_in(tmux)
    os.kill(client, signal.SIGTERM)
    assert tmux.status("a") == str(128 + signal.SIGTERM)
    same_settings(tmux, "a")
    assert s.info().state == "running"


@pytest.mark.usefixtures("test_images")
def test_the_holder_killed_outright_is_torn_down_by_whoever_notices(
    fake_smolvm: Any, holders: Sessions, tmux: TmuxServer, mode: str, shared_dir: Path
) -> None:
    guest_pid = shared_dir / "guest-pid"
    # The fake smolvm's settings are in this process's environment by now: the windows too.
    env = holders.env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    tmux.env.update((k, v) for k, v in env.items() if k != MARK_VAR)
    launched = subprocess.run(
        ["bottle", "-q", "launch", "-n", "m1", "--user", "root", "--agent-command", "/bin/sh",
         "--detach", "--", "-c", f"echo $$ > {guest_pid}; echo ready; exec sleep 300"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (launched.returncode, launched.stdout) == (0, "m1\n"), launched.stderr
    tmux.window("a", attach(tmux, "a", "m1", mode), size=(30, 100))
    tmux.wait_screen("a", lambda x: "ready" in x, "the agent")
    session = sessions.find_session("m1")
    state = session._dir.read_json("state.json")
    assert state is not None
    smolvm_client, guest = state["child_pid"], int(guest_pid.read_text())
    holder = kill_holder(session)
    wait_gone(holder)
    wait_gone(smolvm_client)  # hung up with the holder's pty
    wait_gone(guest)  # and the guest command with it, as on any disconnect
    # The attach notices: the session is lost, and its launch is torn down.
    assert tmux.status("a") == ("125" if mode == "direct" else "0")
    same_settings(tmux, "a")
    if mode == "direct":
        screen = tmux.screen("a")
        assert "session 'm1' was lost (its holder died): its machine 'm1' is stopped" in screen
        assert "error: session 'm1' was lost: its holder died" in screen
        assert fake_smolvm.machine("m1") is None
    else:
        # The API only reports it; the next bottle command tears it down.
        assert fake_smolvm.machine("m1")["state"] == "running"
        listing = subprocess.run(["bottle", "sessions"], env=env, capture_output=True,
                                 text=True, check=True)  # fmt: skip
        assert "its machine 'm1' is stopped and deleted" in listing.stderr
        assert fake_smolvm.machine("m1") is None
    assert sessions.find_session("m1").info().teardown == "done"
    assert [p for p in holders.leftovers() if alive(p)] == []


def require(program: str) -> str:
    import shutil

    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed (scripts/bootstrap installs it)")
    return path
