"""The smolmachines backend end to end against the fake smolvm (tests/fake_smolvm/).

Guest commands really run here: `runuser -u node` and `env` are exercised for real.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from harness.backend import ROOT_IMAGE, fake_release, guest_execs, image_machine, root_spec

from bottle import __version__
from bottle import smolvm as sv
from bottle.backend import (
    Bottle,
    BottleBackend,
    ExecResult,
    LaunchSpec,
    available_backends,
    get_backend,
)
from bottle.backend.smolmachines import (
    RetryPolicy,
    SmolmachinesBottle,
    SmolmachinesBottleBackend,
)
from bottle.errors import (
    BottleClosedError,
    ConnectionLostError,
    GuestCommandError,
    InvalidInputError,
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    RetryExhaustedError,
    SmolvmError,
    UnknownBackendError,
)

FAST = RetryPolicy(attempts=2, delay=0.01)

pytestmark = pytest.mark.usefixtures("test_images")



@pytest.fixture
def backend(fake_smolvm: Any) -> SmolmachinesBottleBackend:
    return SmolmachinesBottleBackend(retry=FAST)


def _interrupt_when(ready: Any, settle: float = 0.2) -> threading.Thread:
    """Deliver SIGINT once `ready()` holds (then `settle` s later), whatever the machine's load.

    A fixed timer lands in a different lifecycle step on a loaded machine; this waits for the
    step itself. Gives up silently after 60 s (the test then fails on its own assertions).
    """

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ready():
                time.sleep(settle)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# --- lifecycle -----------------------------------------------------------------------------


def test_launch_lifecycle(fake_smolvm: Any, backend: SmolmachinesBottleBackend,
                          shared_dir: Path) -> None:  # fmt: skip
    prompt = shared_dir / "host-prompt.md"
    prompt.write_text("be careful\n")
    guest_prompt = shared_dir / "guest" / ".bottle" / "prompt.md"
    workdir = shared_dir / "work dir"
    spec = LaunchSpec(
        "m1",
        image=ROOT_IMAGE,
        cpus=2,
        memory_mib=1024,
        network=True,
        env={"A": "1"},
        prompt_file=str(prompt),
        prompt_guest_path=str(guest_prompt),
        workdir=str(workdir),
    )
    node = pwd.getpwnam("node")
    with backend.launch(spec) as bottle:
        assert isinstance(bottle, SmolmachinesBottle)
        assert fake_smolvm.machine("m1")["state"] == "running"
        assert fake_smolvm.machine("m1")["cpus"] == 2
        # Provisioned: the prompt file is in place, owned by the agent's user.
        assert guest_prompt.read_text() == "be careful\n"
        assert guest_prompt.stat().st_uid == node.pw_uid
        assert workdir.is_dir()
        assert workdir.stat().st_uid == node.pw_uid
        assert bottle.prompt_path == str(guest_prompt)
        argv = bottle.agent_argv(["x"])
        assert argv[argv.index("claude") :] == [
            "claude", "--append-system-prompt-file", str(guest_prompt), "x",
        ]  # fmt: skip
        result = bottle.exec('id -un; echo "$HOME $USER $A"')
        assert result == ExecResult(0, "node\n/home/node node 1\n", "")
    assert bottle.closed
    assert fake_smolvm.machine("m1") is None
    subs = fake_smolvm.subcommands()
    assert subs[:4] == ["--version", "status", "create", "start"]
    assert subs[-2:] == ["stop", "delete"]
    create = ["machine", "create", "-n", "m1", "-I", ROOT_IMAGE, "--cpus", "2", "--mem", "1024"]
    # Labelled as bottle's own, with its network (smolvm 1.8.0 and later keep labels).
    labels = ["--label", f"bottle.version={__version__}", "--label", "bottle.network=open"]
    labelled = sv.parse_version(fake_smolvm.run("--version").stdout) >= sv.LABELS_SINCE
    assert [*create, "--net", *(labels if labelled else [])] in fake_smolvm.calls()


def test_body_exception_tears_down_and_propagates(
    fake_smolvm: Any, backend: SmolmachinesBottleBackend
) -> None:
    fake_smolvm.create("other")
    with pytest.raises(RuntimeError, match="agent crashed"), backend.launch(root_spec()):
        raise RuntimeError("agent crashed")
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.machine("other")["state"] == "running"
    assert fake_smolvm.subcommands()[-2:] == ["stop", "delete"]


def test_keyboard_interrupt_in_body_tears_down(
    fake_smolvm: Any, backend: SmolmachinesBottleBackend
) -> None:
    def in_the_body() -> bool:
        return any(c[1:2] == ["exec"] and "sleep 5" in c[-1] for c in fake_smolvm.calls())

    with pytest.raises(KeyboardInterrupt), backend.launch(root_spec()) as bottle:
        _interrupt_when(in_the_body)
        bottle.exec("sleep 5")
    assert fake_smolvm.machine("m1") is None


def test_teardown_errors_are_logged_and_never_hide_the_first_error(
    fake_smolvm: Any, backend: SmolmachinesBottleBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RuntimeError, match="first"), backend.launch(root_spec()):
        fake_smolvm.set_fault(FAIL_STOP="stop broke", FAIL_DELETE="delete broke")
        raise RuntimeError("first")
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("stop of machine 'm1' failed" in m and "stop broke" in m for m in messages)
    assert any("delete of machine 'm1' failed" in m and "delete broke" in m for m in messages)


def test_teardown_error_without_first_error_is_logged(
    fake_smolvm: Any, backend: SmolmachinesBottleBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with backend.launch(root_spec()):
        fake_smolvm.set_fault(FAIL_DELETE="delete broke")
    assert any("delete broke" in r.getMessage() for r in caplog.records)


def test_keyboard_interrupt_just_after_create(fake_smolvm: Any, monkeypatch: Any) -> None:
    """The machine exists but its undo was not registered yet: it is still removed."""
    fake_smolvm.create("other")
    real_run = sv.Smolvm.run

    def run(self: sv.Smolvm, args: list[str], **kw: Any) -> Any:
        proc = real_run(self, args, **kw)
        if args[1] == "create":
            raise KeyboardInterrupt
        return proc

    monkeypatch.setattr(sv.Smolvm, "run", run)
    with pytest.raises(KeyboardInterrupt), SmolmachinesBottleBackend().launch(root_spec()):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.subcommands()[-1] == "delete"
    assert fake_smolvm.machine("other")["state"] == "running"


def test_keyboard_interrupt_before_create_ran(fake_smolvm: Any, monkeypatch: Any) -> None:
    real_run = sv.Smolvm.run

    def run(self: sv.Smolvm, args: list[str], **kw: Any) -> Any:
        if args[1] == "create":
            raise KeyboardInterrupt
        return real_run(self, args, **kw)

    monkeypatch.setattr(sv.Smolvm, "run", run)
    with pytest.raises(KeyboardInterrupt), SmolmachinesBottleBackend().launch(root_spec()):
        pytest.fail("body must not run")
    # Nothing was created, so nothing is stopped or deleted.
    assert "delete" not in fake_smolvm.subcommands()
    assert "stop" not in fake_smolvm.subcommands()


def test_keyboard_interrupt_during_start(
    fake_smolvm: Any, backend: SmolmachinesBottleBackend
) -> None:
    fake_smolvm.create("other")
    fake_smolvm.set_fault(START_DELAY=10)
    # While smolvm's start is under way (it sleeps 10 s after its first line).
    _interrupt_when(lambda: "start" in fake_smolvm.subcommands(), settle=0.3)
    with pytest.raises(KeyboardInterrupt), backend.launch(root_spec()):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.subcommands()[-1] == "delete"
    assert fake_smolvm.machine("other")["state"] == "running"


def test_keyboard_interrupt_during_provisioning(fake_smolvm: Any, shared_dir: Path) -> None:
    """SIGINT while provisioning waits out a 137 before retrying: stopped and deleted."""
    fake_smolvm.create("other")
    fake_smolvm.set_fault(KILL_EXECS=1)
    prompt = shared_dir / "p.md"
    prompt.write_text("x")
    spec = root_spec(prompt_file=str(prompt), prompt_guest_path=str(shared_dir / "g/p"))
    backend = SmolmachinesBottleBackend(retry=RetryPolicy(delay=30))
    # Once the killed exec has been answered: provisioning now waits 30 s before its retry.
    kills = fake_smolvm.state_dir / "exec_kills"
    _interrupt_when(lambda: kills.exists() and kills.read_text().strip() not in ("", "0"))
    with pytest.raises(KeyboardInterrupt), backend.launch(spec):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.subcommands()[-2:] == ["stop", "delete"]
    assert fake_smolvm.machine("other")["state"] == "running"


def test_provisioning_failure_tears_down(fake_smolvm: Any, backend: SmolmachinesBottleBackend,
                                         shared_dir: Path) -> None:  # fmt: skip
    prompt = shared_dir / "p.md"
    prompt.write_text("x")
    fake_smolvm.set_fault(FAIL_CP="disk full")
    spec = root_spec(prompt_file=str(prompt), prompt_guest_path=str(shared_dir / "g/p"))
    with pytest.raises(SmolvmError, match="disk full"), backend.launch(spec):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") is None


def test_create_failure_leaves_nothing_to_undo(
    fake_smolvm: Any, backend: SmolmachinesBottleBackend
) -> None:
    fake_smolvm.set_fault(FAIL_CREATE="image pull failed")
    with pytest.raises(SmolvmError, match="image pull failed"), backend.launch(root_spec()):
        pytest.fail("body must not run")
    assert not {"start", "stop", "delete"} & set(fake_smolvm.subcommands())


def test_start_failure_deletes(fake_smolvm: Any, backend: SmolmachinesBottleBackend) -> None:
    fake_smolvm.set_fault(START_FAIL=1)
    with pytest.raises(SmolvmError, match="did not become ready"), backend.launch(
        root_spec()
    ):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") is None
    assert "stop" not in fake_smolvm.subcommands()


@pytest.mark.parametrize("running", [True, False])
def test_preexisting_machine_is_never_touched(fake_smolvm: Any,
                                              backend: SmolmachinesBottleBackend,
                                              running: bool) -> None:  # fmt: skip
    before = fake_smolvm.create("m1", running=running)
    with pytest.raises(MachineExistsError, match="already exists"), backend.launch(
        root_spec()
    ):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") == before
    assert not {"create", "start", "stop", "delete"} & set(fake_smolvm.subcommands())


def test_create_collision_is_never_torn_down(
    fake_smolvm: Any, backend: SmolmachinesBottleBackend
) -> None:
    fake_smolvm.set_fault(CREATE_COLLIDE=1)
    with pytest.raises(MachineExistsError), backend.launch(root_spec()):
        pytest.fail("body must not run")
    assert not {"stop", "delete"} & set(fake_smolvm.subcommands())


def test_bad_spec_input_runs_nothing(fake_smolvm: Any, backend: SmolmachinesBottleBackend,
                                     tmp_path: Path) -> None:  # fmt: skip
    cases: list[tuple[LaunchSpec, str]] = [
        (root_spec(prompt_file=str(tmp_path / "missing.md")), "does not exist"),
        (root_spec(prompt_file=str(tmp_path)), "directory"),
        (root_spec(agent_provider="nope"), "unknown agent provider"),
        (root_spec(cpus=0), "cpus"),
        (root_spec(terminal_color="#12"), "colour"),
    ]
    for spec, needle in cases:
        with pytest.raises(ValueError, match=needle), backend.launch(spec):
            pytest.fail("body must not run")
    assert fake_smolvm.calls() == []


# --- exec ----------------------------------------------------------------------------------


def test_exec_as_node_and_root_with_real_runuser(fake_smolvm: Any,
                                                 require_node_user: Any) -> None:  # fmt: skip
    # A smolvm without `exec --user` (before 1.14.0; with it, test_backend_users).
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m", guest_env={"B": "2", "A": "x y"}, retry=FAST)
    node = b.exec('id -un; id -u; echo "$HOME|$USER|$A|$B"')
    assert node.stdout == f"node\n{require_node_user.pw_uid}\n/home/node|node|x y|2\n"
    call = guest_execs(fake_smolvm)[-1]
    assert call[call.index("--") + 1 :][:7] == [
        "runuser", "-u", "node", "--", "env", "HOME=/home/node", "USER=node",
    ]  # fmt: skip
    root = b.exec('id -un; echo "$HOME|$USER"', user="root")
    assert root.stdout == "root\n/root|root\n"
    # The guest already runs as root: no switch, HOME and USER still set.
    call = guest_execs(fake_smolvm)[-1]
    assert call[call.index("--") + 1 :][:3] == ["env", "HOME=/root", "USER=root"]


def test_exec_output_status_and_bad_bytes(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m", retry=FAST)
    r = b.exec("printf 'a\\377b\\n'; echo oops >&2; exit 5")
    assert r == ExecResult(5, "a\ufffdb\n", "oops\n")
    assert not r.ok
    with pytest.raises(GuestCommandError, match="status 5: oops") as info:
        r.check()
    assert info.value.result is r


def test_guest_failure_is_a_result_not_a_smolvm_error(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    r = SmolmachinesBottle("m").exec("echo 'Error: no config' >&2; exit 1")
    assert r == ExecResult(1, "", "Error: no config\n")
    assert SmolmachinesBottle("m").exec("exit 2").returncode == 2


def test_137_is_retried_once_and_logged(fake_smolvm: Any,
                                        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m", retry=FAST)
    b.guest_user()  # learnt first, so the fault hits the command itself
    fake_smolvm.set_fault(KILL_EXECS=1)
    caplog.set_level(logging.WARNING)
    before = len(guest_execs(fake_smolvm))
    r = b.exec("echo ok")
    assert r == ExecResult(0, "ok\n", "")
    assert len(guest_execs(fake_smolvm)) - before == 2
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "status 137 (attempt 1 of 2)" in warnings[0]


def test_default_policy_retries_after_a_settle(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(KILL_EXECS=1)
    # The first exec is killed and run again after the settle: learning who the guest runs as,
    # or, where smolvm has `exec --user` (1.14.0 and later), the command itself.
    assert SmolmachinesBottle("m").exec("echo ok").stdout == "ok\n"
    guest = [c[c.index("--") + 1 :] for c in guest_execs(fake_smolvm)]
    if fake_release() >= (1, 14, 0):
        assert len(guest) == 2 and guest[0] == guest[1] and guest[0][-1] == "echo ok"
    else:
        assert guest[:2] == [["id"], ["id"]]
        assert len(guest) == 3


def test_retry_exhausted_returns_the_last_result_and_check_raises(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(KILL_EXECS=2)
    result = SmolmachinesBottle("m", retry=FAST).exec("echo never")
    assert result == ExecResult(137, "", "")
    assert result.retry_exhausted
    assert [r.returncode for r in result.attempts] == [137, 137]
    with pytest.raises(RetryExhaustedError, match="statuses: 137, 137") as info:
        result.check()
    assert [r.returncode for r in info.value.results] == [137, 137]
    assert info.value.result is info.value.results[-1]
    assert isinstance(info.value, GuestCommandError)


def test_retry_policy_is_data(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    policy = RetryPolicy(attempts=4, delay=0, statuses=frozenset({137}))
    b = SmolmachinesBottle("m", retry=policy)
    b.guest_user()
    fake_smolvm.set_fault(KILL_EXECS=3)
    before = len(guest_execs(fake_smolvm))
    assert b.exec("echo fine").stdout == "fine\n"
    assert len(guest_execs(fake_smolvm)) - before == 4
    # Other statuses, other policy: 137 is not retried, 7 is.
    policy = RetryPolicy(attempts=3, delay=0, statuses=frozenset({7}))
    fake_smolvm.set_fault(KILL_EXECS=5)
    assert SmolmachinesBottle("m", retry=policy).exec("echo x").returncode == 137
    fake_smolvm.set_fault(KILL_EXECS=None)
    with pytest.raises(RetryExhaustedError) as info:
        SmolmachinesBottle("m", retry=policy).exec("exit 7").check()
    assert [r.returncode for r in info.value.results] == [7, 7, 7]


def test_exec_error_classes(fake_smolvm: Any) -> None:
    # smolvm's failures come back as its status and Error: line; check() raises them precisely.
    ghost = SmolmachinesBottle("ghost").exec("true")
    assert ghost.returncode == 1
    assert ghost.stderr.startswith("Error: vm not found")
    with pytest.raises(MachineNotFoundError):
        ghost.check()
    fake_smolvm.create("idle", running=False)
    with pytest.raises(MachineNotRunningError):
        SmolmachinesBottle("idle").exec("true").check()
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(DIE_AFTER=0.3)
    lost = SmolmachinesBottle("m").exec("sleep 10")
    assert lost.returncode == 1
    with pytest.raises(ConnectionLostError, match="connection"):
        lost.check()


# --- exec_agent (no tty here; the tty path is below) --------------------------------------


def _agent_bottle(name: str, **kw: Any) -> SmolmachinesBottle:
    return SmolmachinesBottle(name, agent_command="/bin/sh", agent_prompt_mode="none", **kw)


def test_exec_agent_returns_the_agents_status(fake_smolvm: Any, shared_dir: Path) -> None:
    image_machine(fake_smolvm, "m")
    out = shared_dir / "out"
    b = _agent_bottle("m", agent_workdir=str(shared_dir))
    assert b.exec_agent(["-c", f'pwd > {out}; id -un >> {out}; exit 3'], tty=False) == 3
    assert out.read_text() == f"{shared_dir}\nnode\n"
    # Status 1 on a healthy machine is the agent's own.
    assert b.exec_agent(["-c", "exit 1"], tty=False) == 1


def test_exec_agent_on_missing_or_stopped_machine(fake_smolvm: Any) -> None:
    assert _agent_bottle("ghost").exec_agent(["-c", "true"], tty=False) == 1
    with pytest.raises(MachineNotFoundError):
        _agent_bottle("ghost").run_agent(["-c", "true"], tty=False).check()
    fake_smolvm.create("idle", running=False)
    assert _agent_bottle("idle").exec_agent(["-c", "true"], tty=False) == 1
    with pytest.raises(MachineNotRunningError, match="smolvm machine start -n idle"):
        _agent_bottle("idle").run_agent(["-c", "true"], tty=False).check()
    assert "exec" not in fake_smolvm.subcommands()


def test_exec_agent_connection_lost(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(DIE_AFTER=0.3)
    outcome = _agent_bottle("m").run_agent(["-c", "sleep 10"], tty=False)
    assert outcome.returncode == 1
    with pytest.raises(ConnectionLostError, match="connection to the VM lost") as info:
        outcome.check()
    assert info.value.returncode == 1
    fake_smolvm.run("machine", "start", "-n", "m")
    assert _agent_bottle("m").exec_agent(["-c", "sleep 10"], tty=False) == 1


# --- cp_in ---------------------------------------------------------------------------------


def test_cp_in(fake_smolvm: Any, shared_dir: Path, tmp_path: Path) -> None:
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m")
    src = tmp_path / "a:b c.txt"  # ':' would make smolvm read a download from machine "a"
    src.write_bytes(b"\x00\xffdata")
    dst = shared_dir / "in" / "f.bin"
    b.cp_in(src, str(dst))
    assert dst.read_bytes() == b"\x00\xffdata"
    assert dst.stat().st_uid == 0
    dst2 = shared_dir / "owned.bin"
    b.cp_in(str(src), str(dst2), owner="node")
    assert dst2.stat().st_uid == pwd.getpwnam("node").pw_uid


def test_cp_in_refuses_bad_input_before_running(fake_smolvm: Any, tmp_path: Path) -> None:
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m")
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(InvalidInputError, match="does not exist"):
        b.cp_in(tmp_path / "missing", "/x")
    with pytest.raises(InvalidInputError, match="is a directory"):
        b.cp_in(tmp_path, "/x")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        b.cp_in("/dev/null", "/x")
    with pytest.raises(InvalidInputError, match="absolute"):
        b.cp_in(f, "relative/x")
    with pytest.raises(InvalidInputError, match=r"'\.\.'"):
        b.cp_in(f, "/a/../x")
    with pytest.raises(InvalidInputError, match="user name"):
        b.cp_in(f, "/x", owner="bad user")
    assert fake_smolvm.calls() == []


# --- close --------------------------------------------------------------------------------


def test_close_is_idempotent_and_final(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m")
    with b:
        assert not b.closed
    assert b.closed
    b.close()
    b.close()
    with pytest.raises(BottleClosedError):
        b.exec("true")
    with pytest.raises(BottleClosedError):
        b.exec_agent([])


# --- backend lookup -------------------------------------------------------------------------


class DummyBackend(BottleBackend):
    name = "dummy"

    def launch(self, spec: LaunchSpec) -> Any:
        raise NotImplementedError  # never called: only lookup is tested


def test_get_backend_builtin_and_unknown() -> None:
    assert isinstance(get_backend("smolmachines"), SmolmachinesBottleBackend)
    assert "smolmachines" in available_backends()
    with pytest.raises(UnknownBackendError, match="known backends: smolmachines"):
        get_backend("firecracker")


def test_installed_entry_point_is_registered() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="bottle.backends")}
    assert eps.get("smolmachines") == "bottle.backend.smolmachines:SmolmachinesBottleBackend"


def test_third_party_backend_through_entry_point(monkeypatch: Any) -> None:
    ep = metadata.EntryPoint(
        name="dummy", value=f"{__name__}:DummyBackend", group="bottle.backends"
    )
    real = metadata.entry_points

    def entry_points(**kw: Any) -> Any:
        if kw.get("group") == "bottle.backends":
            return metadata.EntryPoints([ep])
        return real(**kw)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    assert isinstance(get_backend("dummy"), DummyBackend)
    assert available_backends() == ["dummy", "smolmachines"]
    with pytest.raises(UnknownBackendError, match="dummy, smolmachines"):
        get_backend("nope")


def test_bottle_is_abstract() -> None:
    with pytest.raises(TypeError):
        Bottle()  # type: ignore[abstract]

