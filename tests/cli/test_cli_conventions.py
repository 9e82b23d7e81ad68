"""The command line's conventions, as a docker or kubectl user expects them: help with no
arguments, global options anywhere, messages that name flags, one text for a machine name that
is wrong (with a suggestion), and one exit status for bottle's own failures that a guest's
status passes through untouched."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, CLI_FAILURE, ROOT_IMAGE, image_machine
from harness.terminal import run_in_pty

from bottle.cli._errors import FLAGS, flag
from bottle.errors import InvalidInputError, Message, Param

PY = sys.executable
BOTTLE = [PY, "-m", "bottle"]
CONSOLE_SCRIPT = str(Path(PY).parent / "bottle")
SRC = Path(__file__).resolve().parents[2] / "src" / "bottle"

pytestmark = pytest.mark.usefixtures("test_images")

# How a Python parameter shows in a message: `name='x'`, `name=[...]`, `name=True`, or a name
# that only the API has.
PYTHON_TERMS = re.compile(
    r"\b\w+=(['\[]|True\b|False\b|None\b)"
    r"|\b(guest_env|secret_env|allow_hosts|allow_cidrs|agent_user|record_input|memory_mib"
    r"|machine_name|prompt_file|agent_provider)\b"
)


def bottle(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BOTTLE, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False, env=env,
    )  # fmt: skip


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `bottle: error: …` line of a failure with bottle's own status."""
    assert proc.returncode == CLI_FAILURE, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bottle: error: "), proc.stderr
    return lines[0].removeprefix("bottle: error: ")


def imported(*args: str) -> set[str]:
    """The modules the console script loads to run `args` (`importlib.import_module` too)."""
    proc = subprocess.run(
        [CONSOLE_SCRIPT, *args], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONVERBOSE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"^import '([\w.]+)' #", proc.stderr, re.M))


# --- help, and what it costs ---------------------------------------------------------------


def test_plain_bottle_prints_help() -> None:
    proc = bottle()
    assert proc.returncode == 0
    assert proc.stdout == bottle("--help").stdout
    for command in ("launch", "agent", "exec", "cp", "relay", "bench"):
        assert re.search(rf"^  {command}\s", proc.stdout, re.M), proc.stdout
    # The exit statuses are documented where a user looks first.
    assert re.search(rf"^  {CLI_FAILURE}  bottle itself failed", proc.stdout, re.M)
    assert "130  interrupted" in proc.stdout


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["-v", "--help"]])
def test_help_and_version_load_no_backend(args: list[str]) -> None:
    modules = imported(*args)
    assert "bottle.cli._main" in modules  # the table was consulted
    backend = ("bottle.backend", "bottle.smolvm", "bottle.relay", "bottle.network")
    if args == ["--version"]:
        # It says which relay is in use and which smolvm is found (the wrapper, which brings
        # bottle.network), and no more.
        backend = ("bottle.backend",)
    assert sorted(m for m in modules if m.startswith(backend)) == []


def test_a_command_loads_its_own_module_only() -> None:
    modules = imported("cp", "--help")
    ours = {m for m in modules if m.startswith("bottle.cli.") and not m.startswith("bottle.cli._")}
    assert ours == {"bottle.cli.cp"}


def test_a_plain_exec_loads_none_of_what_it_does_not_use(fake_smolvm: Any) -> None:
    """A warm `bottle exec NAME CMD` is one smolvm call, and then its cost is its own start-up.
    The plain form runs without the full path (tests/cli/test_cli_exec_light.py); what it leaves
    to the full path (here `-e`) logs nothing anyone sees (no `logging`), reads no config file
    (no TOML parser, nor the datetime under it), says no "did you mean" (difflib), checks no
    allow-list (ipaddress), and finds smolvm and its terminal's width without shutil (and the
    archive modules under it)."""
    image_machine(fake_smolvm, "m")
    assert bottle("exec", "m", "true").returncode == 0  # the cache filled
    modules = imported("exec", "-e", "A=1", "m", "true")
    assert "bottle.backend.smolmachines" in modules
    unused = ("logging", "tomllib", "tomli", "datetime", "difflib", "ipaddress", "shutil")
    assert sorted(m for m in modules if m.split(".")[0] in unused) == []
    # -v logs each smolvm call: then logging is loaded, before the first record.
    proc = bottle("-v", "exec", "m", "true")
    assert proc.returncode == 0 and "bottle: command in m: [" in proc.stderr, proc.stderr


def test_unknown_command_suggests_the_close_one() -> None:
    proc = bottle("lanch", "-n", "x")
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.endswith("bottle: error: unknown command 'lanch' (did you mean 'launch'?)\n")
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "args", [["-x", "launch"], ["--", "launch"], ["--ver", "exec"], ["-vx", "exec"]]
)
def test_bad_global_options_are_usage_errors(args: list[str]) -> None:
    proc = bottle(*args)
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.splitlines()[0].startswith("usage: bottle ")
    assert proc.stderr.splitlines()[-1].startswith("bottle: error: ")


# --- global options anywhere -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "exec", "-n", "m", "true"],
        ["exec", "-v", "-n", "m", "true"],
        # After the command word an option is the command's (docker's rule): after -c SCRIPT
        # there is none.
        ["exec", "-n", "m", "-c", "true", "--verbose"],
        ["-q", "exec", "-n", "m", "--verbose", "true"],
    ],
)
def test_verbose_before_or_after_the_command(fake_smolvm: Any, args: list[str]) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact stderr: below 1.8.1 a paste warning comes first
    image_machine(fake_smolvm, "m")
    proc = bottle(*args)
    assert proc.returncode == 0, proc.stderr
    assert "bottle: running [" in proc.stderr  # each smolvm call logged
    assert bottle("exec", "-n", "m", "true").stderr == ""


def test_quiet_after_the_command(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(START_DELAY="1.2")
    argv = [*BOTTLE, "launch", "-n", "m1", "--user", "root", "--agent-command", "/bin/sh"]
    loud = run_in_pty([*argv, "--", "-c", "echo agent-here"])
    assert b"bottle: starting 'm1'" in loud.output  # a terminal shows the progress
    quiet = run_in_pty([*argv, "-q", "--", "-c", "echo agent-here"])
    assert quiet.status == 0, quiet.output
    assert b"agent-here" in quiet.output
    assert b"bottle: starting" not in quiet.output
    assert b"Starting machine" not in quiet.output


def test_agent_arguments_after_double_dash_stay_the_agents(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    # `-q` and `-v` after `--` are the agent's, not bottle's.
    image_machine(fake_smolvm, "m")
    out = shared_dir / "args"
    proc = bottle("agent", "-n", "m", "--no-tty", "--agent-command", "/bin/sh",
                  "--prompt-mode", "none", "--", "-c", f'printf "%s|" "$@" > {out}',
                  "zero", "-q", "-v", "--", "--help")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bottle: running" not in proc.stderr
    assert out.read_text() == "-q|-v|--|--help|"


# --- exit statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [1, 2, 124, 125, 126, 127, 255])
def test_a_guests_status_passes_through_unchanged(fake_smolvm: Any, status: int) -> None:
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(VERSION="1.9.3")  # no paste warning on stderr
    proc = bottle("exec", "-n", "m", f"echo out; exit {status}")
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, "out\n", "")


# --- machine names ---------------------------------------------------------------------------


def test_a_missing_machine_is_one_text_everywhere_with_a_suggestion(
    fake_smolvm: Any, tmp_path: Path
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact stderr: below 1.8.1 a paste warning comes first
    image_machine(fake_smolvm, "demo")
    image_machine(fake_smolvm, "other")
    note = tmp_path / "note.txt"
    note.write_text("x")
    runs = {
        "exec": bottle("exec", "-n", "dmeo", "true"),
        "agent": bottle("agent", "-n", "dmeo", "--no-tty"),
        "cp": bottle("cp", "-n", "dmeo", str(note), "/tmp/note.txt"),
    }
    for command, proc in runs.items():
        assert one_error(proc) == "machine 'dmeo' does not exist (did you mean 'demo'?)", command
    assert one_error(bottle("exec", "-n", "zzz", "true")) == "machine 'zzz' does not exist"


def test_a_stopped_machine_is_one_text_everywhere(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact stderr: below 1.8.1 a paste warning comes first
    fake_smolvm.create("idle", running=False)  # created, never started
    want = "machine 'idle' is not running (state: created); start it with: smolvm machine " \
           "start --name idle"  # fmt: skip
    assert one_error(bottle("exec", "-n", "idle", "true")) == want
    assert one_error(bottle("agent", "-n", "idle", "--no-tty")) == want


# --- messages in flags ----------------------------------------------------------------------

CASES = [
    (["launch", "-n", "m1", "--image", AGENT_IMAGE, "--network", "allow"],
     "--network allow needs --allow-host or --allow-cidr; for no network at all use "
     "--network off"),
    (["launch", "-n", "m1", "--image", AGENT_IMAGE, "--network", "off"],
     "Turn it on (--network open, or --network agent for the agent's hosts only), or supply "
     "the image locally: save it to an archive (`docker save bottle-test/agent:1 -o "
     "image.tar`) and launch with --image ./image.tar"),
    (["launch", "-n", "m1", "--image", AGENT_IMAGE, "--network", "allow", "--allow-cidr",
      "10.0.0.0/8"],
     "Add the registry's hosts (--allow-host docker.io --allow-host docker.com), use "
     "--network open, or supply the image locally (`docker save bottle-test/agent:1 -o "
     "image.tar`, then --image ./image.tar)"),
    (["launch", "-n", "m1"],
     "(--image=IMAGE), or run the agent as root (--user root)"),
    (["launch", "-n", "m1", "--image", ROOT_IMAGE, "--workdir", "rel"],
     "--workdir 'rel' must be absolute (start with '/')"),
    (["agent", "-n", "m", "--workdir", "/a/../b"],
     "--workdir '/a/../b' must not contain '.' or '..' segments"),
    (["exec", "-n", "m", "-w", "rel", "true"],
     "--workdir 'rel' must be absolute (start with '/')"),
    (["exec", "-n", "m", "-e", "HOME=/x", "true"],
     "-e name 'HOME' is reserved: runuser and bottle set it in the guest"),
    (["exec", "-n", "m", "--secret-env", "PATH", "true"],
     "--secret-env name 'PATH' is reserved: a secret is also in the environment of the host "
     "smolvm process, where this name would change how it runs (pass it in -e if it is not "
     "secret)"),
    (["exec", "-n", "m", "-e", "TOKEN=x", "--secret-env", "TOKEN", "true"],
     "'TOKEN' is in both -e and --secret-env"),
    (["launch", "-n", "m1", "--image", ROOT_IMAGE, "--cpus", "256"],
     "--cpus must be an integer from 1 to 255, not 256"),
    (["launch", "-n", "m1", "--image", ROOT_IMAGE, "--memory", "4294967296"],
     "--memory must be an integer from 1 to 4294967295, not 4294967296"),
    (["launch", "-n", "m1", "--record-input"], "--record-input needs --record FILE.cast"),
    (["launch", "-n", "m1", "--record", "x.cast", "--no-tty"],
     "--record needs a terminal session (drop --no-tty)"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "said"), CASES, ids=[" ".join(a[:4]) for a, _ in CASES])
def test_messages_name_flags_not_python_parameters(fake_smolvm: Any, args: list[str],
                                                   said: str) -> None:  # fmt: skip
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact stderr: below 1.8.1 a paste warning comes first
    image_machine(fake_smolvm, "m")
    calls = len(fake_smolvm.calls())
    text = one_error(bottle(*args, env={**os.environ, "TOKEN": "t"}))
    assert said in text
    assert not PYTHON_TERMS.search(text), text
    # Refused before any machine is touched (the listing of machines for a suggestion aside).
    assert [c for c in fake_smolvm.calls()[calls:] if c[1:2] in (["create"], ["exec"])] == []


def test_the_api_keeps_its_own_wording() -> None:
    from bottle.backend import LaunchSpec

    with pytest.raises(InvalidInputError) as info:
        LaunchSpec("m1", network="allow")
    assert str(info.value) == (
        "network='allow' needs allow_hosts or allow_cidrs; for no network at all use "
        "network='off'"
    )


def test_every_parameter_an_error_names_has_a_flag() -> None:
    named = set()
    for path in SRC.rglob("*.py"):
        named |= set(re.findall(r'\bParam\(\s*"(\w+)"', path.read_text()))
    assert "network" in named  # the scan sees them
    missing = sorted(named - set(FLAGS) - {"tty"})
    assert missing == [], f"spell them for the command line in cli._errors.FLAGS: {missing}"


def test_a_message_renders_in_either_terms_and_survives_pickling() -> None:
    import pickle

    msg = Message("use {a} or {b}, not {x!r}", a=Param("network", "off"),
                  b=Param("allow_hosts", ["a.b", "c d"]), x="{odd}")  # fmt: skip
    assert msg == "use network='off' or allow_hosts=['a.b', 'c d'], not '{odd}'"
    cli = "use --network off or --allow-host a.b --allow-host 'c d', not '{odd}'"
    assert msg.render(flag) == cli
    error = pickle.loads(pickle.dumps(InvalidInputError(msg)))
    assert str(error) == msg
    assert error.args[0].render(flag) == msg.render(flag)
