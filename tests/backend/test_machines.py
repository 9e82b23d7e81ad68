"""The machines a backend can see, whoever made them: list, stop, remove; a launch's labels;
the teardown given up by an interrupt; and a launch planned without running it (dry_run)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, ROOT_IMAGE

from bottle import smolvm as sv
from bottle.backend import LaunchSpec, MachineInfo, Progress
from bottle.backend.smolmachines import PlannedCall, RetryPolicy, SmolmachinesBottleBackend
from bottle.errors import (
    InvalidInputError,
    MachineNotFoundError,
    MachineRunningError,
    TeardownInterrupted,
)

pytestmark = pytest.mark.usefixtures("test_images")



def _backend() -> SmolmachinesBottleBackend:
    return SmolmachinesBottleBackend(smolvm=sv.Smolvm(), retry=RetryPolicy(delay=0.01))


def _create_call(fake: Any) -> list[str]:
    return next(c for c in fake.calls() if c[1:2] == ["create"])


# --- a launch's labels, and the listing --------------------------------------------------------


def test_a_launch_labels_its_machine_and_the_listing_reads_it_back(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # labels since 1.8.0
    fake_smolvm.add_host("github.com", "192.0.2.10")
    fake_smolvm.add_host("api.anthropic.com", "192.0.2.20")
    fake_smolvm.add_host("platform.claude.com", "192.0.2.21")
    made = time.time()
    fake_smolvm.create("old", image=ROOT_IMAGE, created_at=int(made) - 3 * 3600, network=True)
    fake_smolvm.create("idle", running=False)
    spec = LaunchSpec("m1", image=AGENT_IMAGE, network="agent", allow_hosts=["github.com"],
                      allow_cidrs=["10.20.0.0/16"])  # fmt: skip
    backend = _backend()
    with backend.launch(spec):
        machines = backend.list_machines()
    create = _create_call(fake_smolvm)
    labels = [create[i + 1] for i, word in enumerate(create) if word == "--label"]
    assert labels == [
        "bottle.version=0.1.0", "bottle.network=agent",
        "bottle.allow-hosts=api.anthropic.com,platform.claude.com,github.com",
        "bottle.allow-cidrs=10.20.0.0/16",
    ]  # fmt: skip
    assert [m.name for m in machines] == ["idle", "m1", "old"]  # by name
    idle, m1, old = machines
    assert m1 == MachineInfo(
        name="m1", state="running", image=AGENT_IMAGE, network="agent",
        allow_hosts=("api.anthropic.com", "platform.claude.com", "github.com"),
        allow_cidrs=("10.20.0.0/16",), created_at=m1.created_at, launched_by_bottle=True,
        cpus=4, memory_mib=8192,
    )  # fmt: skip
    assert m1.created_at is not None and abs(m1.created_at - made) < 60
    # Not bottle's: what smolvm's listing tells (networking or not), no allow-list.
    assert (old.launched_by_bottle, old.network, old.state, old.image) == (
        False, "on", "running", ROOT_IMAGE)  # fmt: skip
    assert old.age(made) == pytest.approx(3 * 3600, abs=2)
    assert (idle.launched_by_bottle, idle.network, idle.state, idle.image) == (
        False, "off", "created", None)  # fmt: skip
    assert backend.list_machines() == [idle, old]  # the launch's machine went with it


def test_no_labels_before_smolvm_1_8_0(fake_smolvm: Any) -> None:
    # smolvm 1.7.x has no `create --label` (src/cli/machine.rs at v1.7.3): a label would be a
    # usage error, so the machine goes unmarked.
    fake_smolvm.set_fault(VERSION="1.7.3")
    backend = _backend()
    with backend.launch(LaunchSpec("m1", image=AGENT_IMAGE)):
        (m1,) = backend.list_machines()
    assert "--label" not in _create_call(fake_smolvm)
    assert (m1.launched_by_bottle, m1.network) == (False, "on")


def test_label_values_are_checked() -> None:
    assert sv.create_args("m", labels={"a.b": "x=y", "e": ""}) == [
        "machine", "create", "-n", "m", "--label", "a.b=x=y", "--label", "e=",
    ]  # fmt: skip
    for bad in ({"": "x"}, {"a=b": "x"}, {"a": "x\0"}):
        with pytest.raises(InvalidInputError):
            sv.create_args("m", labels=bad)


# --- stop and remove ---------------------------------------------------------------------------


def test_stop_and_remove(fake_smolvm: Any) -> None:
    fake_smolvm.create("a")
    fake_smolvm.create("b")
    backend = _backend()
    events: list[Progress] = []
    backend.stop_machine("a", progress=events.append)
    assert fake_smolvm.machine("a")["state"] == "stopped"
    assert [(e.step, e.done) for e in events if e.line is None] == [
        ("stopping", False), ("stopping", True)]  # fmt: skip
    backend.stop_machine("a")  # not running: stays as it is
    backend.remove_machine("a")
    assert fake_smolvm.machine("a") is None
    # A running machine only with force, which stops it first.
    with pytest.raises(MachineRunningError, match="force=True") as info:
        backend.remove_machine("b")
    assert (info.value.machine, info.value.state) == ("b", "running")
    assert fake_smolvm.machine("b")["state"] == "running"
    assert "delete" not in fake_smolvm.subcommands()[-1:]
    backend.remove_machine("b", force=True)
    assert fake_smolvm.machine("b") is None
    for call in (backend.remove_machine, backend.stop_machine):
        with pytest.raises(MachineNotFoundError) as missing:
            call("ghost")
        assert missing.value.machine == "ghost"
    with pytest.raises(InvalidInputError, match="force must be True or False"):
        backend.remove_machine("x", force="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="invalid machine name"):
        backend.stop_machine("-x")


# --- the teardown, given up --------------------------------------------------------------------


@pytest.mark.parametrize("step", ["stopping", "deleting"])
def test_an_interrupt_during_teardown_gives_it_up_and_says_what_is_left(
    fake_smolvm: Any, step: str
) -> None:
    """KeyboardInterrupt during a teardown step: the smolvm call is cut short, the steps after
    it are skipped, and TeardownInterrupted (still a KeyboardInterrupt) names the machine."""
    events: list[Progress] = []

    def progress(event: Progress) -> None:
        events.append(event)
        if event.step == step and event.line is None and not event.done:
            raise KeyboardInterrupt  # as a Ctrl-C would, as the step begins

    launched = _backend().launch(LaunchSpec("m1", agent_user="root"), progress=progress)
    with pytest.raises(KeyboardInterrupt) as info, launched:
        raise KeyboardInterrupt  # the first one: the teardown starts
    assert isinstance(info.value, TeardownInterrupted)
    assert (info.value.machine, info.value.step) == ("m1", step)
    assert "remove_machine('m1', force=True)" in str(info.value)
    subs = fake_smolvm.subcommands()
    assert fake_smolvm.machine("m1") is not None  # left behind, as it says
    if step == "stopping":
        assert "stop" not in subs and "delete" not in subs  # nothing after it either
    else:
        assert subs[-1] == "stop" and "delete" not in subs
    assert [e.step for e in events if e.done] == (
        ["creating", "starting", "provisioning"] + (["stopping"] if step == "deleting" else []))


def test_a_failing_teardown_step_does_not_stop_the_next(fake_smolvm: Any) -> None:
    events: list[Progress] = []
    with _backend().launch(LaunchSpec("m1", agent_user="root"), progress=events.append):
        fake_smolvm.set_fault(FAIL_STOP="stop failed")
    assert fake_smolvm.machine("m1") is None
    assert [e.step for e in events if e.done][-1] == "deleting"


# --- dry run -----------------------------------------------------------------------------------


def _real_calls(fake: Any) -> list[list[str]]:
    """The calls that change something or run in the guest (not status, --version, --help)."""
    keep = ("create", "start", "exec", "cp", "stop", "delete")
    calls = [c for c in fake.calls() if c[1:2] and c[1] in keep and "--help" not in c]
    return [["smolvm", *c] for c in calls]


def test_dry_run_plans_exactly_what_the_launch_then_runs(
    fake_smolvm: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1.9.3: the image's USER runs every command (as the dry run assumes) and cp takes ids.
    fake_smolvm.set_fault(VERSION="1.9.3")
    prompt = tmp_path / "prompt.md"
    prompt.write_text("p")
    monkeypatch.setenv("TOKEN_FOR_TEST", "hunter2-dry-run")
    spec = LaunchSpec(
        "m1", image=AGENT_IMAGE, prompt_file=str(prompt), workdir="/home/node/src",
        secret_env={"TOKEN_FOR_TEST": "hunter2-dry-run"}, env={"PROJECT": "x"}, cpus=2,
        agent_command="true",  # there, so that the real session runs after the check
    )  # fmt: skip
    backend = _backend()
    planned = backend.dry_run(spec, ["--model", "sonnet"], tty=False)
    # Nothing ran: smolvm was asked its version, its exec options and the name's status only.
    assert set(fake_smolvm.subcommands()) <= {"--version", "exec", "status"}
    assert all("--help" in c for c in fake_smolvm.calls() if c[1:2] == ["exec"])
    assert fake_smolvm.machine("m1") is None
    assert "hunter2-dry-run" not in json.dumps([c.argv for c in planned])
    assert [c.step for c in planned] == [
        "creating", "starting", "provisioning", "provisioning", "provisioning", "provisioning",
        "session", "session", "stopping", "deleting",
    ]  # fmt: skip
    assert all(isinstance(c, PlannedCall) and c.argv[0] == "smolvm" for c in planned)
    # The launch itself, then the same agent session by hand: the same calls, in order.
    with backend.launch(spec) as bottle:
        assert bottle.exec_agent(["--model", "sonnet"], tty=False) == 0
    real = _real_calls(fake_smolvm)
    assert len(real) == len(planned)
    for plan, ran in zip(planned, real, strict=True):
        want = [*plan.argv]
        for i, word in enumerate(want):  # the ids the dry run could not know
            if word in ("UID", "GID"):
                assert ran[i].isdigit()
                want[i] = ran[i]
        assert want == ran
    notes = {c.note for c in planned if c.note}
    assert "who the guest runs commands as: the image's USER (assumed: node)" in notes
    assert "node's uid and gid in the guest (UID and GID below)" in notes
    assert "assumed: 'true' is there" in notes  # the agent check before the session


def test_dry_run_refuses_what_launch_refuses(fake_smolvm: Any) -> None:
    fake_smolvm.create("taken")
    backend = _backend()
    with pytest.raises(Exception, match="already exists"):
        backend.dry_run(LaunchSpec("taken", agent_user="root"))
    with pytest.raises(InvalidInputError, match="only user is root"):
        backend.dry_run(LaunchSpec("m1"))
    assert fake_smolvm.machine("m1") is None
    assert set(fake_smolvm.subcommands()) <= {"--version", "status"}
