"""Bad input (README, "Bad input"): each is a clear error naming the problem, raised before
anything runs, and nothing is left behind: the fake smolvm's call log stays empty (not even
`smolvm --version` ran), no process is left, the user's terminal is untouched.

Cases cover the public API (`SmolmachinesBottle`, `LaunchSpec`, `launch`, `get_backend`) and
the `bottle` CLI on a real terminal.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness.backend import BOTTLE, CLI_FAILURE, LAUNCH, ROOT_IMAGE, ProcWatch, image_machine
from harness.terminal import terminal_on_stdio, user_terminal, wait_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottle import smolvm as sv
from bottle.backend import LaunchSpec, get_backend
from bottle.backend.smolmachines import (
    RetryPolicy,
    SmolmachinesBottle,
    SmolmachinesBottleBackend,
)
from bottle.errors import (
    InvalidInputError,
    SmolvmNotExecutableError,
    UnknownBackendError,
    UnknownProviderError,
)

pytestmark = pytest.mark.usefixtures("test_images")



@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "inside").write_text("y")
    return {"file": plain, "dir": directory, "missing": tmp_path / "missing.txt"}


def _bottle(**kw: Any) -> SmolmachinesBottle:
    return SmolmachinesBottle("m", **kw)


def _launch(**kw: Any) -> None:
    spec = LaunchSpec(**{"machine_name": "m1", "image": ROOT_IMAGE, **kw})
    with SmolmachinesBottleBackend().launch(spec):
        pytest.fail("the body must not run")


def _enter(context: Any) -> None:
    with context:
        pytest.fail("the body must not run")


BAD_MACHINE_NAMES = ["", "-a", "_a", "a--b", "a-", "a b", "a/b", "a:b", "a.b", "é", "a\0b",
                     "a\n", "x" * 129]
BAD_ENV_NAMES = ["", "1A", "A-B", "A B", "A=B", "Ä", "A\0", "A\n"]
ENV_NAME = "invalid environment variable name"

Case = tuple[str, Callable[[dict[str, Path]], object], type[Exception], str]


def _each(names: list[str], what: str, make: Callable[[str], object], needle: str) -> list[Case]:
    return [
        (f"{what} {n!r}"[:60], lambda f, n=n: make(n), InvalidInputError, needle)
        for n in names
    ]


CASES: list[Case] = [
    *_each(BAD_MACHINE_NAMES, "machine name", SmolmachinesBottle, "invalid machine name"),
    *_each(BAD_MACHINE_NAMES, "launch machine name", lambda n: _launch(machine_name=n),
           "invalid machine name"),
    *_each(BAD_ENV_NAMES, "guest_env name", lambda n: _bottle(guest_env={n: "v"}), ENV_NAME),
    *_each(BAD_ENV_NAMES, "secret_env name", lambda n: _bottle(secret_env={n: "v"}), ENV_NAME),
    *_each(BAD_ENV_NAMES, "launch env name", lambda n: _launch(env={n: "v"}), ENV_NAME),
    ("secret named HOME", lambda f: _bottle(secret_env={"HOME": "v"}), InvalidInputError,
     "'HOME' is reserved"),
    ("NUL in an agent argument (tty)", lambda f: _bottle().exec_agent(["a\0b"], tty=True),
     InvalidInputError, "argument 0 contains a NUL byte"),
    ("NUL in an agent argument", lambda f: _bottle().exec_agent(["ok", "a\0"], tty=False),
     InvalidInputError, "argument 1 contains a NUL byte"),
    ("NUL in a script", lambda f: _bottle().exec("echo \0"), InvalidInputError,
     "script contains a NUL byte"),
    ("NUL in a guest_env value", lambda f: _bottle(guest_env={"A": "x\0"}), InvalidInputError,
     "guest_env['A'] contains a NUL byte"),
    ("NUL in a secret_env value", lambda f: _bottle(secret_env={"T": "x\0"}), InvalidInputError,
     "secret_env['T'] contains a NUL byte"),
    ("NUL in a launch secret", lambda f: _launch(secret_env={"T": "x\0"}), InvalidInputError,
     "secret_env['T'] contains a NUL byte"),
    ("NUL in the agent command", lambda f: _bottle(agent_command="cl\0aude"), InvalidInputError,
     "agent command contains a NUL byte"),
    ("NUL in a cp_in host path", lambda f: _bottle().cp_in(f"{f['file']}\0", "/x"),
     InvalidInputError, "contains a NUL byte"),
    ("NUL in a cp_in guest path", lambda f: _bottle().cp_in(f["file"], "/x\0"),
     InvalidInputError, "contains a NUL byte"),
    ("relative cp_in guest path", lambda f: _bottle().cp_in(f["file"], "x/y"),
     InvalidInputError, "'x/y' must be absolute"),
    ("'..' in cp_in guest path", lambda f: _bottle().cp_in(f["file"], "/a/../etc/passwd"),
     InvalidInputError, "must not contain '.' or '..'"),
    ("'.' in cp_in guest path", lambda f: _bottle().cp_in(f["file"], "/a/./b"),
     InvalidInputError, "must not contain '.' or '..'"),
    ("relative workdir", lambda f: _bottle(agent_workdir="work"), InvalidInputError,
     "agent workdir 'work' must be absolute"),
    ("'..' in workdir", lambda f: _bottle(agent_workdir="/home/node/.."), InvalidInputError,
     "must not contain '.' or '..'"),
    ("relative prompt path", lambda f: _bottle(prompt_path="p.md"), InvalidInputError,
     "must be absolute"),
    ("relative launch workdir", lambda f: _launch(workdir="w"), InvalidInputError,
     "workdir 'w' must be absolute"),
    ("'..' in launch prompt path", lambda f: _launch(prompt_guest_path="/a/../p"),
     InvalidInputError, "must not contain '.' or '..'"),
    ("missing cp_in host file", lambda f: _bottle().cp_in(f["missing"], "/x"),
     InvalidInputError, "does not exist"),
    ("directory for cp_in", lambda f: _bottle().cp_in(f["dir"], "/x"), InvalidInputError,
     "is a directory; only regular files can be copied"),
    ("device for cp_in", lambda f: _bottle().cp_in("/dev/null", "/x"), InvalidInputError,
     "is not a regular file"),
    ("missing prompt file", lambda f: _launch(prompt_file=str(f["missing"])),
     InvalidInputError, "does not exist"),
    ("directory as prompt file", lambda f: _launch(prompt_file=str(f["dir"])),
     InvalidInputError, "is a directory"),
    ("unknown backend", lambda f: get_backend("qemu"), UnknownBackendError,
     "unknown backend 'qemu'; known backends: smolmachines"),
    ("unknown provider (bottle)", lambda f: _bottle(agent_provider_template="gpt"),
     UnknownProviderError, "unknown agent provider 'gpt'; known providers: claude, codex"),
    ("unknown provider (launch)", lambda f: _launch(agent_provider="gpt"),
     UnknownProviderError, "unknown agent provider 'gpt'"),
    ("unknown prompt mode", lambda f: _bottle(agent_prompt_mode="inline"), InvalidInputError,
     "unknown prompt mode 'inline'"),
    ("bad user", lambda f: _bottle().exec("true", user="-root"), InvalidInputError,
     "invalid user name '-root'"),
    ("bad cp owner", lambda f: _bottle().cp_in(f["file"], "/x", owner="a b"),
     InvalidInputError, "invalid user name 'a b'"),
    ("no cpus", lambda f: _launch(cpus=0), InvalidInputError,
     "cpus must be an integer from 1 to 255"),
    *[
        # Issue 19: a wrong type is refused naming the parameter (it used to be an
        # AttributeError or TypeError traceback from deep inside, or accepted outright).
        (f"type: {what}", action, InvalidInputError, needle)
        for what, action, needle in [
            ("LaunchSpec image", lambda f: _launch(image=5),
             "image must be a string or None, not int"),
            ("LaunchSpec env", lambda f: _launch(env=[("A", "1")]),
             "env must be a mapping of variable names to strings (a dict), not list"),
            ("LaunchSpec secret_env", lambda f: _launch(secret_env=[("T", "1")]),
             "secret_env must be a mapping"),
            ("LaunchSpec cpus", lambda f: _launch(cpus="2"),
             "cpus must be an integer or None, not a string"),
            ("LaunchSpec memory_mib", lambda f: _launch(memory_mib=True),
             "memory_mib must be an integer or None, not bool"),
            ("LaunchSpec prompt_file", lambda f: _launch(prompt_file=5),
             "prompt_file must be a path (str or os.PathLike) or None, not int"),
            ("LaunchSpec agent_provider", lambda f: _launch(agent_provider=None),
             "agent_provider must be a string, not NoneType"),
            ("LaunchSpec agent_command", lambda f: _launch(agent_command=["claude"]),
             "agent_command must be a string or None, not list"),
            ("LaunchSpec prompt_mode", lambda f: _launch(prompt_mode=1),
             "prompt_mode must be a string or None, not int"),
            ("LaunchSpec terminal_title", lambda f: _launch(terminal_title=None),
             "terminal_title must be a string, not NoneType"),
            ("LaunchSpec terminal_color", lambda f: _launch(terminal_color=0x203040),
             "terminal_color must be a string, not int"),
            ("LaunchSpec allow_hosts", lambda f: _launch(network="allow", allow_hosts=5),
             "allow_hosts must be a list of host names, not int"),
            ("LaunchSpec allow_cidrs", lambda f: _launch(network="allow", allow_cidrs=8),
             "allow_cidrs must be a list of CIDRs, not int"),
            ("LaunchSpec image '-'", lambda f: _launch(image="-"), "invalid image reference '-'"),
            ("Timeouts", lambda f: sv.Timeouts(start="300"),
             "Timeouts start must be a number of seconds or None, not str"),
            ("RetryPolicy attempts", lambda f: RetryPolicy(attempts="2"),
             "RetryPolicy attempts must be an integer, not a string"),
            ("RetryPolicy delay", lambda f: RetryPolicy(delay=math.nan),
             "RetryPolicy delay must be 0 or more seconds (and finite), not nan"),
            ("RetryPolicy statuses", lambda f: RetryPolicy(statuses=137),
             "RetryPolicy statuses must be a set of exit statuses, not int"),
            ("RetryPolicy status", lambda f: RetryPolicy(statuses={"137"}),
             "each of RetryPolicy statuses must be an integer, not a string"),
            ("bottle guest_env", lambda f: _bottle(guest_env=[("A", "1")]),
             "guest_env must be a mapping"),
            ("bottle smolvm", lambda f: _bottle(smolvm="/usr/bin/smolvm"),
             "smolvm must be a bottle.smolvm.Smolvm or None, not str"),
            ("bottle retry", lambda f: _bottle(retry=3), "retry must be a RetryPolicy, not int"),
            ("backend retry", lambda f: SmolmachinesBottleBackend(retry=None),
             "retry must be a RetryPolicy, not NoneType"),
            ("Smolvm timeouts", lambda f: sv.Smolvm(timeouts=60),
             "timeouts must be a bottle.smolvm.Timeouts, not int"),
            ("exec_agent argv", lambda f: _bottle().exec_agent(5),
             "argv must be a sequence of strings, not int"),
            ("exec_agent tty", lambda f: _bottle().exec_agent([], tty="no"),
             "tty must be True or False, not 'no'"),
            ("run_agent record_input", lambda f: _bottle().run_agent([], record_input=1),
             "record_input must be True or False, not 1"),
            ("agent_argv argv", lambda f: _bottle().agent_argv(None),
             "argv must be a sequence of strings, not NoneType"),
            ("exec script", lambda f: _bottle().exec(b"true"), "script must be a string"),
            ("cp_in host_path", lambda f: _bottle().cp_in(5, "/x"),
             "host file must be a path (str or os.PathLike), not int"),
            ("cp_in container_path", lambda f: _bottle().cp_in(f["file"], 5),
             "guest path must be a string, not int"),
            ("launch spec", lambda f: _enter(SmolmachinesBottleBackend().launch("m1")),
             "spec must be a LaunchSpec, not str"),
            ("launch progress", lambda f: _enter(SmolmachinesBottleBackend().launch(
                LaunchSpec("m1", image=ROOT_IMAGE), progress="bar")),
             "progress must be a callable or None, not str"),
            ("from_spec spec", lambda f: SmolmachinesBottle.from_spec({"machine_name": "m"}),
             "spec must be a LaunchSpec, not dict"),
        ]
    ],
]


@pytest.mark.parametrize(("what", "action", "error", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_runs(
    fake_smolvm: Any,
    files: dict[str, Path],
    what: str,
    action: Callable[[dict[str, Path]], object],
    error: type[Exception],
    needle: str,
) -> None:
    image_machine(fake_smolvm, "m")
    with pytest.raises(error) as info:
        action(files)
    assert needle in str(info.value), f"{what}: unclear message {str(info.value)!r}"
    assert isinstance(info.value, ValueError)  # every bad-input error is also a ValueError
    assert fake_smolvm.calls() == [], f"{what}: smolvm ran anyway"
    assert fake_smolvm.machine("m1") is None


def test_secret_values_stay_out_of_bad_input_errors(fake_smolvm: Any) -> None:
    value = "sekrit-value-4711"
    for bad in ({"T": value + "\0"}, {"HOME": value}, {"1T": value}):
        with pytest.raises(InvalidInputError) as info:
            _bottle(secret_env=bad)
        assert value not in str(info.value) and value not in repr(info.value)
    assert fake_smolvm.calls() == []


# --- a smolvm that cannot be executed --------------------------------------------------------


@pytest.fixture
def unexecutable(fake_smolvm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """BOTTLE_SMOLVM names a mode-0644 copy of the fake (had it run, the call log would say)."""
    copy = tmp_path / "bin" / "smolvm"
    copy.parent.mkdir()
    shutil.copy(fake_smolvm.path, copy)
    copy.chmod(0o644)
    monkeypatch.setenv("BOTTLE_SMOLVM", str(copy))
    return copy


NEEDS_SMOLVM: list[tuple[str, Callable[[Path], object]]] = [
    ("exec", lambda f: _bottle().exec("true")),
    ("exec_agent", lambda f: _bottle().exec_agent(["-c", "true"], tty=False)),
    ("cp_in", lambda f: _bottle().cp_in(f, "/tmp/x")),
    ("launch", lambda f: _launch()),
]


@pytest.mark.parametrize(("what", "action"), NEEDS_SMOLVM, ids=[c[0] for c in NEEDS_SMOLVM])
def test_non_executable_smolvm_is_a_clear_error(
    fake_smolvm: Any, unexecutable: Path, tmp_path: Path, what: str,
    action: Callable[[Path], object],
) -> None:
    image_machine(fake_smolvm, "m")
    host_file = tmp_path / "f"
    host_file.write_text("x")
    with pytest.raises(SmolvmNotExecutableError) as info:
        action(host_file)
    assert str(info.value) == f"BOTTLE_SMOLVM={str(unexecutable)!r} is not an executable file"
    # The PermissionError subprocess would have raised (a drop-in caller's except clause), never
    # mistaken for a missing program.
    assert isinstance(info.value, PermissionError)
    assert not isinstance(info.value, FileNotFoundError)
    assert fake_smolvm.calls() == []


def test_non_executable_smolvm_on_path(fake_smolvm: Any, unexecutable: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("BOTTLE_SMOLVM")
    monkeypatch.setenv("PATH", f"{unexecutable.parent}:/usr/bin:/bin")
    image_machine(fake_smolvm, "m")
    with pytest.raises(SmolvmNotExecutableError, match=f"smolvm found at {unexecutable} but it "
                       "is not executable"):  # fmt: skip
        _bottle().exec("true")
    assert fake_smolvm.calls() == []


def test_tty_session_with_bad_input_leaves_the_terminal_alone(
    fake_smolvm: Any, unexecutable: Path
) -> None:
    """In process, a decorated tty session refused before it starts: not one byte (no title
    sequence) reaches the terminal and its settings are unchanged."""
    image_machine(fake_smolvm, "m")
    bottle = _bottle(terminal_title="t", terminal_color="navy")
    with terminal_on_stdio() as term:
        with pytest.raises(SmolvmNotExecutableError):
            bottle.exec_agent(["-c", "true"], tty=True)
        with pytest.raises(InvalidInputError, match="NUL"):
            bottle.exec_agent(["\0"], tty=True)
        out = term.settle(quiet=0.2)
        term.assert_restored()
    assert out == b""
    assert fake_smolvm.calls() == []


# --- the CLI on a real terminal --------------------------------------------------------------

CLI_CASES: list[tuple[list[str], str]] = [
    (["agent", "-n", "a--b"], "invalid machine name 'a--b': it contains '--'"),
    (["launch", "--name=-x"], "invalid machine name '-x'"),
    (["agent", "-n", "m", "-e", "1A=2"], "invalid environment variable name '1A'"),
    (["agent", "-n", "m", "--secret-env", "A-B"], "invalid environment variable name 'A-B'"),
    (["agent", "-n", "m", "--secret-env", "UNSET_FOR_SURE_42"], "UNSET_FOR_SURE_42 is not set"),
    (["agent", "-n", "m", "--workdir", "rel"], "workdir 'rel' must be absolute"),
    ([*LAUNCH, "--workdir", "/a/../b"], "must not contain '.' or '..'"),
    (["agent", "-n", "m", "--provider", "gpt"], "unknown agent provider 'gpt'"),
    ([*LAUNCH, "--backend", "qemu"], "unknown backend 'qemu'"),
    ([*LAUNCH, "--prompt-file", "/nonexistent/p.md"], "does not exist"),
    ([*LAUNCH, "--prompt-file", "/etc"], "is a directory"),
    (["cp", "-n", "m", "/dev/null", "/x"], "is not a regular file"),
    (["cp", "-n", "m", "/nonexistent/f", "/x"], "does not exist"),
    (["cp", "-n", "m", "/etc/passwd", "../x"], "must be absolute"),
    (["agent", "-n", "m", "--user", "root:x"], "invalid user name 'root:x'"),
]


@pytest.mark.parametrize(("args", "needle"), CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_bad_input_on_a_terminal(fake_smolvm: Any, args: list[str], needle: str) -> None:
    """One line `bottle: error: …` naming the problem, exit 125, no smolvm call, no process
    left, and the terminal exactly as it was."""
    image_machine(fake_smolvm, "m")
    argv = [*BOTTLE, *args]
    if args[0] in ("agent", "launch"):
        argv += ["--agent-command", "/bin/sh", "--", "-c", "echo must-not-run"]
    with user_terminal() as term:
        proc = term.spawn(argv, dict(os.environ))
        with ProcWatch(proc.pid) as watch:
            status = wait_status(proc)
            out = term.settle(quiet=0.2)
            leftovers = watch.leftovers()
        term.assert_restored()
    assert status == CLI_FAILURE, out
    lines = out.rstrip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(b"bottle: error: ") and needle.encode() in lines[0], out
    assert fake_smolvm.calls() == []
    assert leftovers == []


def test_cli_non_executable_smolvm_on_a_terminal(fake_smolvm: Any, unexecutable: Path) -> None:
    image_machine(fake_smolvm, "m")
    argv = [*BOTTLE, "agent", "-n", "m", "--title", "t", "--agent-command", "/bin/sh"]
    with user_terminal() as term:
        status = wait_status(term.spawn(argv, dict(os.environ)))
        out = term.settle(quiet=0.2)
        term.assert_restored()
    assert status == CLI_FAILURE
    assert out.rstrip() == (
        f"bottle: error: BOTTLE_SMOLVM={str(unexecutable)!r} is not an executable file".encode()
    )
    assert fake_smolvm.calls() == []


# --- good input survives the whole path --------------------------------------------------------

_PROBE = (
    "import json, os, sys; json.dump([os.getcwd(), os.environ.get('V'), os.environ.get('S'), "
    "sys.argv[2:]], open(sys.argv[1], 'w'))"
)
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=30)  # fmt: skip
_dirname = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"), min_size=1,
    max_size=30,
).filter(lambda s: s not in (".", ".."))


# Slow step only: fixed examples of the same in test_backend_argv.py
# (test_awkward_workdirs_reach_the_agent) and test_secrets.py (the guest gets the exact secret).
@pytest.mark.slow
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=_dirname, value=_text, secret=_text, args=st.lists(_text, max_size=4))
def test_any_workdir_env_secret_and_argument_survive_the_whole_exec_path(
    fake_smolvm: Any, require_node_user: Any, name: str, value: str, secret: str,
    args: list[str],
) -> None:  # fmt: skip
    """What the validators accept arrives unchanged: through smolvm's argument parsing, `-e`
    name forwarding, runuser, env and the `sh -lc` workdir trampoline, as the agent's user."""
    if fake_smolvm.machine("m") is None:
        image_machine(fake_smolvm, "m")
    with tempfile.TemporaryDirectory(prefix="bottle-hyp-") as base:
        os.chmod(base, 0o777)
        workdir = os.path.join(base, name)
        os.mkdir(workdir)
        os.chmod(workdir, 0o777)
        out = os.path.join(base, "probe.json")
        bottle = SmolmachinesBottle(
            "m", agent_command="/usr/bin/python3", agent_prompt_mode="none",
            agent_workdir=workdir, guest_env={"V": value}, secret_env={"S": secret},
        )  # fmt: skip
        status = bottle.exec_agent(["-c", _PROBE, out, *args], tty=False)
        assert status == 0
        with open(out) as f:
            got = json.load(f)
    assert got == [workdir, value, secret, args]
