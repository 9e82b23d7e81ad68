"""bottle as a drop-in for the replaced `SmolmachinesBottle`: its callers' code, unchanged.

Each test is written the way a caller of the replaced class writes it (DESIGN.md, "Behaviour
contract — backend layer", and issue 10's table, one test per row at least), and runs against
bottle through the fake smolvm. The precise errors are one step away (`check()`), and tested
next to the status the caller sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from harness.backend import ROOT_IMAGE, guest_execs, image_machine
from harness.terminal import run_in_pty

from bottle.agent_provider import prompt_args
from bottle.backend import Bottle, ExecResult, LaunchSpec
from bottle.backend.smolmachines import RetryPolicy, SmolmachinesBottle, SmolmachinesBottleBackend
from bottle.backend.terminal import decoration, exec_shell_script
from bottle.errors import (
    ConnectionLostError,
    MachineNotFoundError,
    MachineNotRunningError,
    RetryExhaustedError,
)

FAST = RetryPolicy(attempts=2, delay=0.01)

pytestmark = pytest.mark.usefixtures("test_images")



def _machine(fake_smolvm: Any, name: str = "m", **fields: Any) -> None:
    """A running machine that can take the replaced class's default user, node (an image like
    node:22: commands run as root, and runuser reaches node)."""
    image_machine(fake_smolvm, name, **fields)


def _args_printer(directory: Path) -> str:
    """A guest program that prints each of its arguments in brackets (an agent stand-in)."""
    path = directory / "print-args"
    path.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done; echo\n')
    path.chmod(0o755)
    return str(path)


# --- row 1: bottle.name ----------------------------------------------------------------------


def test_name_is_the_machine_name(fake_smolvm: Any, shared_dir: Path) -> None:
    bottle = SmolmachinesBottle("proj-1")
    assert bottle.name == "proj-1"
    backend = SmolmachinesBottleBackend(retry=FAST)
    with backend.launch(LaunchSpec("proj-2", image=ROOT_IMAGE)) as launched:
        assert launched.name == "proj-2"
        assert fake_smolvm.machine(launched.name)["state"] == "running"


def test_the_replaced_class_attributes_and_defaults(fake_smolvm: Any) -> None:
    bottle = SmolmachinesBottle(
        "m",
        prompt_path="/home/node/.bottle/prompt.md",
        guest_env={"A": "1"},
        agent_command="codex",
        agent_prompt_mode="read_prompt_file",
        agent_provider_template="codex",
        terminal_title="proj",
        terminal_color="#123456",
    )
    assert (bottle.name, bottle.prompt_path, bottle.agent_command) == (
        "m", "/home/node/.bottle/prompt.md", "codex",
    )  # fmt: skip
    assert (bottle.terminal_title, bottle.terminal_color) == ("proj", "#123456")
    assert bottle.agent_provider_template == "codex"
    assert bottle.agent_workdir == "/home/node"
    assert isinstance(bottle, Bottle)
    with bottle as same:
        assert same is bottle
    bottle.close()  # idempotent
    assert bottle.closed


# --- row 2: cp_in(host_path, container_path=…) -------------------------------------------------


def test_cp_in_takes_container_path(fake_smolvm: Any, tmp_path: Path, shared_dir: Path) -> None:
    _machine(fake_smolvm)
    src = tmp_path / "settings.json"
    src.write_text('{"a": 1}\n')
    dest = shared_dir / "cfg" / "settings.json"
    bottle = SmolmachinesBottle("m")
    assert bottle.cp_in(src, container_path=str(dest)) is None
    assert dest.read_text() == '{"a": 1}\n'
    bottle.cp_in(str(src), str(shared_dir / "positional"))  # and positionally
    assert (shared_dir / "positional").read_text() == '{"a": 1}\n'


# --- row 3: prompt_args returns the prompt arguments only; the caller places argv -------------


def _caller_agent_argv(bottle: SmolmachinesBottle, argv: list[str]) -> list[str]:
    """What a caller of the replaced prompt_args builds: argv placed by the mode."""
    extra = prompt_args(bottle.agent_prompt_mode, bottle.prompt_path, argv=argv)
    if bottle.agent_prompt_mode == "append_file":
        return [bottle.agent_command, *extra, *argv]
    return [bottle.agent_command, *argv, *extra]


def test_prompt_args_append_file_caller_places_argv_after(
    fake_smolvm: Any, shared_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert prompt_args("append_file", "/p.md", argv=["--resume", "x"]) == [
        "--append-system-prompt-file", "/p.md",
    ]  # fmt: skip
    assert prompt_args("append_file", None, argv=["a"]) == []
    _machine(fake_smolvm)
    agent = _args_printer(shared_dir)
    bottle = SmolmachinesBottle("m", prompt_path="/p.md", agent_command=agent)
    argv = ["--resume", "x y"]
    expected = _caller_agent_argv(bottle, argv)
    assert expected == [agent, "--append-system-prompt-file", "/p.md", "--resume", "x y"]
    # bottle's own command line places them the same way, each argument exactly once.
    assert bottle.agent_argv(argv)[-len(expected) :] == expected
    capfd.readouterr()
    assert bottle.exec_agent(argv, tty=False) == 0
    assert capfd.readouterr().out == "[--append-system-prompt-file][/p.md][--resume][x y]\n"


def test_prompt_args_read_prompt_file_caller_places_argv_before(
    fake_smolvm: Any, shared_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    extra = prompt_args("read_prompt_file", "/p.md", argv=["--model", "o3"])
    assert len(extra) == 1
    assert "/p.md" in extra[0]
    assert "--model" not in extra
    _machine(fake_smolvm)
    agent = _args_printer(shared_dir)
    bottle = SmolmachinesBottle(
        "m", prompt_path="/p.md", agent_command=agent, agent_prompt_mode="read_prompt_file"
    )
    argv = ["--model", "o3"]
    expected = _caller_agent_argv(bottle, argv)
    assert expected == [agent, "--model", "o3", extra[0]]
    assert bottle.agent_argv(argv, tty=False)[-len(expected) :] == expected
    capfd.readouterr()
    assert bottle.exec_agent(argv, tty=False) == 0
    assert capfd.readouterr().out == f"[--model][o3][{extra[0]}]\n"


# --- row 4: subprocess.run(["sh", "-c", exec_shell_script(argv, title, color)]) ---------------


def test_exec_shell_script_runs_under_sh_c_with_the_agents_status(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    _machine(fake_smolvm)
    agent = _args_printer(shared_dir)
    bottle = SmolmachinesBottle("m", agent_command=agent, agent_prompt_mode="none")
    argv = bottle.agent_argv(["a b", "$HOME", "'; exit 9; '", "$(touch pwned)"], tty=False)
    script = exec_shell_script(argv, "proj", "navy")
    assert isinstance(script, str)
    proc = subprocess.run(
        ["sh", "-c", script], capture_output=True, check=False, timeout=60,
        env=bottle.child_env(), cwd=shared_dir,
    )  # fmt: skip
    deco = decoration("proj", "navy")
    assert deco is not None
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        deco.start + "[a b][$HOME]['; exit 9; '][$(touch pwned)]\n" + deco.reset
    ).encode()
    assert not (shared_dir / "pwned").exists()
    # The agent's status, not the trailing reset's.
    failing = bottle.agent_argv(["x"], tty=False)
    failing[failing.index(agent)] = "false"
    script = exec_shell_script(failing, "proj", "")
    assert script is not None
    assert subprocess.run(["sh", "-c", script], capture_output=True, check=False).returncode == 1
    # Nothing to decorate: None, and the caller runs argv as it is.
    assert exec_shell_script(argv, "", "") is None


# --- row 5: exec gives back the last ExecResult when the 137 retry is used up ------------------


def test_exec_returns_the_last_result_after_the_retry(fake_smolvm: Any) -> None:
    _machine(fake_smolvm)
    bottle = SmolmachinesBottle("m", retry=FAST)
    assert bottle.exec("true").returncode == 0
    fake_smolvm.set_fault(KILL_EXECS=2)
    before = len(guest_execs(fake_smolvm))
    result = bottle.exec("echo never")
    assert isinstance(result, ExecResult)
    assert (result.returncode, result.stdout, result.stderr) == (137, "", "")
    assert len(guest_execs(fake_smolvm)) - before == 2
    with pytest.raises(RetryExhaustedError) as info:
        result.check()
    assert [r.returncode for r in info.value.results] == [137, 137]
    fake_smolvm.set_fault(KILL_EXECS=None)
    assert bottle.exec("echo fine") == ExecResult(0, "fine\n", "")


def test_exec_returns_smolvms_failure_as_a_result(fake_smolvm: Any) -> None:
    missing = SmolmachinesBottle("ghost").exec("true")
    assert missing.returncode == 1
    assert "vm not found" in missing.stderr
    with pytest.raises(MachineNotFoundError):
        missing.check()
    fake_smolvm.create("idle", running=False)
    stopped = SmolmachinesBottle("idle").exec("true")
    assert stopped.returncode == 1
    with pytest.raises(MachineNotRunningError):
        stopped.check()


# --- row 6: exec_agent returns smolvm's status; the caller prints "session ended (exit N)" ------

CALLER = textwrap.dedent(
    """
    import json, os, sys
    from bottle.backend.smolmachines import SmolmachinesBottle
    cfg = json.loads(os.environ["DROPIN_CFG"])
    bottle = SmolmachinesBottle(cfg["machine"], agent_command="/bin/sh", agent_prompt_mode="none")
    status = bottle.exec_agent(cfg["argv"], tty=cfg["tty"])
    print(f"session ended (exit {status})", flush=True)
    """
)


def _caller(machine: str, argv: list[str], *, tty: bool) -> tuple[list[str], dict[str, str]]:
    cfg = {"machine": machine, "argv": argv, "tty": tty}
    return [sys.executable, "-c", CALLER], {**os.environ, "DROPIN_CFG": json.dumps(cfg)}


@pytest.mark.parametrize("tty", [True, False], ids=["tty", "no-tty"])
def test_exec_agent_status_when_the_vm_dies_mid_session(fake_smolvm: Any, tty: bool) -> None:
    _machine(fake_smolvm)
    fake_smolvm.set_fault(DIE_AFTER=0.8)
    argv, env = _caller("m", ["-c", "echo started; sleep 20"], tty=tty)
    run = run_in_pty(argv, env)
    assert b"started" in run.output  # streamed (-i) without a tty too
    assert b"session ended (exit 1)" in run.output, run.output
    assert b"Traceback" not in run.output
    assert run.status == 0
    assert run.termios_after == run.termios_before


@pytest.mark.parametrize("tty", [True, False], ids=["tty", "no-tty"])
def test_exec_agent_status_on_a_missing_or_stopped_machine(fake_smolvm: Any, tty: bool) -> None:
    fake_smolvm.create("idle", running=False)
    for machine, needle in (("ghost", b"does not exist"), ("idle", b"is not running")):
        argv, env = _caller(machine, ["-c", "true"], tty=tty)
        run = run_in_pty(argv, env)
        assert b"session ended (exit 1)" in run.output, run.output
        assert needle in run.output  # the user is told why
        assert b"Traceback" not in run.output


def test_exec_agent_status_and_the_precise_error_one_step_away(fake_smolvm: Any) -> None:
    _machine(fake_smolvm)
    bottle = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none")
    assert bottle.exec_agent(["-c", "exit 5"], tty=False) == 5
    assert bottle.run_agent(["-c", "exit 5"], tty=False).check().returncode == 5
    fake_smolvm.set_fault(DIE_AFTER=0.3)
    outcome = bottle.run_agent(["-c", "sleep 20"], tty=False)
    assert outcome.returncode == 1
    with pytest.raises(ConnectionLostError):
        outcome.check()


# --- row 7: except FileNotFoundError when smolvm is not installed ----------------------------


def test_missing_smolvm_is_caught_as_file_not_found(
    fake_smolvm: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    bottle = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none")
    calls = [
        lambda: bottle.exec("true"),
        lambda: bottle.exec_agent(["-c", "true"], tty=False),
        lambda: bottle.cp_in(__file__, "/tmp/x"),
    ]
    for call in calls:
        try:
            call()
        except FileNotFoundError as exc:
            assert "smolvm not found on PATH" in str(exc)
        else:
            pytest.fail("no FileNotFoundError")
    launch = SmolmachinesBottleBackend().launch(LaunchSpec("m", image=ROOT_IMAGE))
    with pytest.raises(FileNotFoundError), launch:
        pytest.fail("body must not run")


def test_unrunnable_smolvm_is_caught_as_permission_error(
    fake_smolvm: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    smolvm = tmp_path / "smolvm"
    smolvm.write_text("#!/bin/sh\n")
    smolvm.chmod(0o644)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PermissionError, match="not executable"):
        SmolmachinesBottle("m").exec("true")


# --- row 8: plain-string prompt modes ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["append_file", "read_prompt_file"])
def test_prompt_modes_are_plain_strings(mode: str) -> None:
    bottle = SmolmachinesBottle(
        "m", prompt_path="/p", agent_prompt_mode=mode, agent_provider_template="codex"
        if mode == "read_prompt_file" else "claude",
    )  # fmt: skip
    assert bottle.agent_prompt_mode == mode
    assert isinstance(bottle.agent_prompt_mode, str)
    assert f"{bottle.agent_prompt_mode}" == mode
    assert str(bottle.agent_prompt_mode) == mode
    assert json.dumps({"mode": bottle.agent_prompt_mode}) == json.dumps({"mode": mode})
    assert {"append_file": 1, "read_prompt_file": 2}[bottle.agent_prompt_mode] in (1, 2)


# --- row 9: ExecResult(returncode=…, stdout=…, stderr=…) ---------------------------------------


def test_exec_result_keyword_construction_equality_and_repr(fake_smolvm: Any) -> None:
    made = ExecResult(returncode=0, stdout="hi\n", stderr="")
    assert made == ExecResult(0, "hi\n", "")
    assert hash(made) == hash(ExecResult(0, "hi\n", ""))
    assert repr(made) == "ExecResult(returncode=0, stdout='hi\\n', stderr='')"
    with pytest.raises(AttributeError):
        made.returncode = 1  # type: ignore[misc]
    _machine(fake_smolvm)
    got = SmolmachinesBottle("m").exec("echo hi")
    assert got == made
    assert repr(got) == repr(made)
    # The extras stay out of equality and show in repr only when set.
    failed = SmolmachinesBottle("ghost").exec("true")
    assert failed == ExecResult(failed.returncode, failed.stdout, failed.stderr)
    assert repr(failed).endswith(", error=MachineNotFoundError)")
