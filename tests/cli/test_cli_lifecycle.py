"""`bottle ls`, `stop` and `rm`; what a launch's progress looks like on a real terminal (tmux)
and off one; a Ctrl-C during the teardown; where a recording went."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness.backend import (
    AGENT_IMAGE,
    CLI_FAILURE,
    LAUNCH,
    ROOT_IMAGE,
    ProcWatch,
    run_bottle,
    wait_for,
)
from harness.terminal import run_in_pty, user_terminal, wait_status
from harness.tmux import Tmux

from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import SmolmachinesBottleBackend

BOTTLE = [sys.executable, "-m", "bottle"]

pytestmark = pytest.mark.usefixtures("test_images")


bottle = run_bottle


# --- ls ----------------------------------------------------------------------------------------


def test_ls_shows_every_machine_and_marks_bottles_own(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # labels since 1.8.0
    fake_smolvm.add_host("api.anthropic.com", "192.0.2.20")
    fake_smolvm.add_host("platform.claude.com", "192.0.2.21")
    assert bottle("ls").stdout == "NAME   STATE   IMAGE   NETWORK   AGE   CREATED BY\n"
    assert json.loads(bottle("ls", "--json").stdout) == []
    fake_smolvm.create("old", image=ROOT_IMAGE, created_at=int(time.time()) - 2 * 86400 - 60,
                       network=True)  # fmt: skip
    fake_smolvm.create("idle", running=False)
    spec = LaunchSpec("m1", image=AGENT_IMAGE, network="agent")
    with SmolmachinesBottleBackend().launch(spec):
        table = bottle("ls")
        listed = bottle("ls", "--json")
        names = bottle("ls", "--names")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["NAME", "STATE", "IMAGE", "NETWORK", "AGE", "CREATED", "BY"]
    assert rows[1] == ["idle", "created", "-", "off", rows[1][4], "-"]
    assert re.fullmatch(r"\d+s", rows[1][4])
    assert rows[2] == ["m1", "running", AGENT_IMAGE, "agent", rows[2][4], "bottle"]
    assert rows[3] == ["old", "running", ROOT_IMAGE, "on", "2d", "-"]
    # Columns line up: each value starts where its heading does.
    head = table.stdout.splitlines()[0]
    for line in table.stdout.splitlines()[1:]:
        assert line.index(line.split()[1], len(line.split()[0])) == head.index("STATE")
    got = {m["name"]: m for m in json.loads(listed.stdout)}
    assert got["m1"]["allow_hosts"] == ["api.anthropic.com", "platform.claude.com"]
    assert got["m1"]["launched_by_bottle"] is True and got["m1"]["network"] == "agent"
    assert got["old"]["launched_by_bottle"] is False and got["old"]["network"] == "on"
    assert isinstance(got["old"]["created_at"], int)
    assert set(got["idle"]) == {"name", "state", "image", "network", "allow_hosts",
                                "allow_cidrs", "created_at", "launched_by_bottle", "cpus",
                                "memory_mib"}  # fmt: skip
    assert names.stdout == "idle\nm1\nold\n"


# --- stop and rm ---------------------------------------------------------------------------------


def test_stop_and_rm_as_docker_does(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact stderr: no paste warning
    fake_smolvm.create("demo")
    fake_smolvm.create("other")
    # A running machine is refused without -f, with the commands that do it.
    refused = bottle("rm", "demo")
    assert refused.returncode == CLI_FAILURE
    assert refused.stderr == (
        "bottle: error: machine 'demo' is running; stop it first (bottle stop demo), or stop "
        "and remove it at once: bottle rm -f demo\n"
    )
    assert fake_smolvm.machine("demo")["state"] == "running"
    stopped = bottle("-q", "stop", "demo")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "", "")
    assert fake_smolvm.machine("demo")["state"] == "stopped"
    removed = bottle("rm", "demo")
    assert removed.returncode == 0, removed.stderr
    assert re.fullmatch(r"bottle: deleting 'demo' … done in \d+\.\d s\n", removed.stderr)
    assert fake_smolvm.machine("demo") is None
    # -f: running ones too; a wrong name is reported and the others still go.
    forced = bottle("rm", "-f", "othr", "other")
    assert forced.returncode == CLI_FAILURE
    assert "bottle: error: machine 'othr' does not exist (did you mean 'other'?)" in forced.stderr
    assert fake_smolvm.machine("other") is None
    assert fake_smolvm.subcommands()[-1] == "delete"
    missing = bottle("stop", "ghost")
    assert missing.returncode == CLI_FAILURE
    assert missing.stderr.splitlines()[-1] == "bottle: error: machine 'ghost' does not exist"
    assert bottle("rm").returncode == CLI_FAILURE  # a name is needed


@pytest.mark.parametrize("how", ["stop", "rm"])
def test_a_session_whose_machine_goes_from_under_it(fake_smolvm: Any, how: str) -> None:
    # `bottle stop` or `bottle rm -f` from another terminal while an agent runs: smolvm's client
    # loses its VM, bottle says so, and the teardown does what is left (a stopped machine is
    # deleted; a removed one leaves nothing to do, and no failure to report).
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact stderr: no paste warning
    proc = subprocess.Popen(
        [*BOTTLE, "-q", *LAUNCH, "--no-tty", "--agent-command", "/bin/sh", "--", "-c",
         "echo started; exec sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    gone = bottle("-q", *(["stop", "m1"] if how == "stop" else ["rm", "-f", "m1"]))
    assert gone.returncode == 0, gone.stderr
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == CLI_FAILURE, err
    lines = err.splitlines()
    assert lines[0] == "Error: agent operation failed: run interactive: connection to VM lost"
    assert len(lines) == 2 and lines[1].startswith("bottle: error: "), err  # no teardown failure
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.subcommands().count("delete") == 1  # the teardown's, or rm's alone


# --- progress on a terminal, and off one -------------------------------------------------------


def test_verbose_launch_on_a_terminal_reads_well(fake_smolvm: Any) -> None:
    """`bottle -v launch` in tmux: every log line whole on its own line (none written into the
    status line), smolvm's lines once each, its pull bar folded into the status line (never a
    line of its own), and the teardown shown step by step."""
    fake_smolvm.set_fault(VERSION="1.9.3", DELAY_START="1.5", DELAY_STOP="1.5")
    argv = [*BOTTLE, "-v", *LAUNCH, "--agent-command", "/bin/sh", "--no-tty",
            "--", "-c", "echo agent-here"]  # fmt: skip
    pane = Tmux(shlex.join(argv), os.environ)
    try:
        assert pane.exit_status() == 0
        lines = [line for line in pane.lines() if line]
    finally:
        pane.close()
    shown = "\n".join(lines)
    assert "agent-here" in lines
    for line in lines[:-1]:  # the last is EXIT=
        # A log line written into the status line would put two of bottle's lines in one.
        assert line.count("bottle: ") <= 1, shown
        assert line.startswith(("bottle: ", "  ", "agent-here")), shown
    assert any(line.startswith("bottle: running [") for line in lines), shown
    for said in ("Starting machine 'm1'...", f"Pulling image {ROOT_IMAGE}... done."):
        assert [line.strip() for line in lines].count(said) == 1, shown
    # The bar was never a line (a logged guest command may hold a printf's '%s').
    assert not any(re.search(r"\d%", line) for line in lines), shown
    steps = [m.group(1) for m in map(re.compile(r"bottle: (\w+) 'm1' … done in ").match, lines)
             if m]  # fmt: skip
    assert steps == ["creating", "starting", "provisioning", "stopping", "deleting"], shown


def test_the_pull_bar_is_drawn_in_the_status_line(fake_smolvm: Any) -> None:
    run = run_in_pty([*BOTTLE, *LAUNCH, "--agent-command", "/bin/sh", "--no-tty", "--",
                      "-c", "true"], cols=160)  # fmt: skip
    assert run.status == 0, run.output
    segments = re.split(rb"[\r\n]", run.output)
    bars = [s for s in segments if b"%" in s]
    assert bars, run.output
    for segment in bars:
        # Each state of smolvm's bar goes into the status line, after the step and its time.
        assert re.match(rb"\x1b\[Kbottle: starting 'm1' \xe2\x80\xa6 \d+ s  Pulling image ",
                        segment), segment  # fmt: skip


def test_a_status_line_never_wraps(fake_smolvm: Any) -> None:
    # A wrapped status line could not be erased by "\r" and erase-line: it is cut to the width.
    fake_smolvm.set_fault(DELAY_START="1.2")
    run = run_in_pty([*BOTTLE, *LAUNCH, "--agent-command", "/bin/sh", "--no-tty", "--",
                      "-c", "true"], cols=20)  # fmt: skip
    assert run.status == 0, run.output
    parts = run.output.split(b"\r")
    # A status line is drawn after "\r" + erase-line and ended by the next "\r"; a printed
    # line (done in …), which may wrap, ends with the terminal's "\r\n".
    statuses = [s for s, after in itertools.pairwise(parts)
                if s.startswith(b"\x1b[Kbottle: starting") and not after.startswith(b"\n")]
    assert statuses, run.output
    for segment in statuses:
        assert len(segment.removeprefix(b"\x1b[K").decode()) <= 19, segment


# --- a Ctrl-C during the teardown --------------------------------------------------------------


@pytest.mark.parametrize("step", ["stop", "delete"])
def test_ctrl_c_during_teardown_says_what_is_left_and_how_to_remove_it(
    fake_smolvm: Any, shared_dir: Path, step: str
) -> None:
    """^C during provisioning starts the teardown; a second ^C during it gives it up: the
    smolvm call running is cut short, nothing after it runs, and bottle says which machine is
    left and the command that removes it. No process is left behind."""
    # Provisioning's first guest command hangs, so the first ^C lands there however late.
    fake_smolvm.set_fault(DELAY_EXEC="60", **{f"DELAY_{step.upper()}": "60"})
    argv = [*BOTTLE, *LAUNCH, "--agent-command", "/bin/sh", "--workdir", str(shared_dir / "w")]
    with user_terminal() as term:
        proc = term.spawn(argv, os.environ)
        with ProcWatch(proc.pid) as watch:
            wait_for(lambda: "exec" in fake_smolvm.subcommands(), "provisioning")
            term.send(b"\x03")
            wait_for(lambda: step in fake_smolvm.subcommands(), f"the teardown's {step}")
            term.send(b"\x03")
            status = wait_status(proc)
            out = term.settle()
            leftovers = watch.leftovers()
        term.assert_restored()
    assert status == 130, out
    cut = {"stop": "stopping", "delete": "deleting"}[step]
    last = out.rstrip().splitlines()[-1].split(b"\x1b[K")[-1].lstrip(b"\x03")
    assert last == (
        f"bottle: interrupted: machine 'm1' is left behind ({cut} it was cut short); remove it "
        "with: bottle rm -f m1"
    ).encode(), out
    assert b"Traceback" not in out
    assert leftovers == []
    subs = fake_smolvm.subcommands()
    assert subs[-1] == step  # nothing after the step cut short
    assert fake_smolvm.machine("m1") is not None
    # The command it gave does what it says.
    fake_smolvm.set_fault(**{f"DELAY_{step.upper()}": None})
    removed = bottle("rm", "-f", "m1")
    assert removed.returncode == 0, removed.stderr
    assert fake_smolvm.machine("m1") is None


def test_the_teardown_is_shown_as_it_runs(fake_smolvm: Any) -> None:
    # Off a terminal: one line per step, each begun as it begins (a reader of a pipe or a log
    # sees what is running now), ended with its duration.
    fake_smolvm.set_fault(DELAY_DELETE="60")
    proc = subprocess.Popen(
        [*BOTTLE, *LAUNCH, "--no-tty", "--agent-command", "/bin/sh", "--", "-c", "true"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = b""
    try:
        os.set_blocking(proc.stderr.fileno(), False)
        deadline = time.monotonic() + 60
        while not seen.endswith("bottle: deleting 'm1' …".encode()):
            assert time.monotonic() < deadline, seen
            seen += proc.stderr.read() or b""
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert "bottle: stopping 'm1' … done in ".encode() in seen


# --- the recording -----------------------------------------------------------------------------


def test_record_says_where_the_recording_went(fake_smolvm: Any, tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    run = run_in_pty([*BOTTLE, *LAUNCH, "--agent-command", "/bin/sh", "--record", str(cast),
                      "--", "-c", "echo recorded-here"])  # fmt: skip
    assert run.status == 0, run.output
    assert b"recorded-here" in cast.read_bytes()
    last = run.output.rstrip().splitlines()[-1].split(b"\x1b[K")[-1]
    assert last == (f"bottle: recorded the session in {cast} (play it with: asciinema play "
                    f"{cast})").encode()  # fmt: skip
    # No session, no recording, nothing said about one.
    fake_smolvm.create("idle", running=False)
    again = run_in_pty([*BOTTLE, "agent", "-n", "idle", "--record", str(tmp_path / "t.cast")])
    assert again.status == CLI_FAILURE
    assert b"recorded" not in again.output
    assert not (tmp_path / "t.cast").exists()


def test_off_a_terminal_a_line_between_a_steps_start_and_end_leaves_both_whole() -> None:
    """A step's line is begun when it begins; a log or error line that comes before its end
    ends it there, and the step's end is then written as a whole line of its own."""
    import io

    from bottle.cli._progress import ProgressDisplay
    from bottle.cli._stderr import Console
    from bottle.results import Progress

    out = io.StringIO()
    console = Console(out)
    with ProgressDisplay(enabled=True, terminal=False, console=console) as display:
        display.update(Progress("creating", "m1"))
        display.update(Progress("creating", "m1", 0.25, done=True))
        display.update(Progress("starting", "m1"))
        display.update(Progress("starting", "m1", 0.5, line="Starting machine 'm1'..."))
        console.print("bottle: a log line")
        display.update(Progress("starting", "m1", 1.5, done=True))
        display.update(Progress("provisioning", "m1"))
    # provisioning never ended (it failed): its line is ended as it is, for the error after it.
    assert out.getvalue() == (
        "bottle: creating 'm1' … done in 0.2 s\n"
        "bottle: starting 'm1' …\n"
        "bottle: a log line\n"
        "bottle: starting 'm1' … done in 1.5 s\n"
        "bottle: provisioning 'm1' …\n"
    )
