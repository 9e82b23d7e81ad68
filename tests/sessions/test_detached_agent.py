"""Detached agent sessions through the backend, against the fake smolvm: `exec_agent`/
`run_agent(detach=True)` start smolvm's `exec -i -t` client in a session holder (native or
pure), a launch hands its teardown over, and a holder killed outright takes smolvm's client
and the guest with it (the fake dies of the hang-up as smolvm does) and leaves the teardown
to whoever notices."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness.backend import ProcWatch, image_machine, root_spec
from harness.relay import MARK_VAR, alive, assert_none_marked
from harness.sessions import Client, wait_for, wait_gone

from bottle import sessions
from bottle.backend import get_backend
from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.errors import InvalidInputError, MachineNotRunningError
from bottle.sessions import Session

pytestmark = pytest.mark.usefixtures("test_images")

SECRET = "s3cr3t-detached-value"



@pytest.fixture
def mark(impl: str, runtime: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The holder runs the implementation under test; everything it starts carries a mark."""
    monkeypatch.delenv("BOTTLE_NO_EXTENSIONS", raising=False)
    monkeypatch.delenv("BOTTLE_REQUIRE_EXTENSION", raising=False)
    monkeypatch.setenv("BOTTLE_REQUIRE_EXTENSION" if impl == "native" else "BOTTLE_NO_EXTENSIONS",
                       "1")  # fmt: skip
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VAR, value)
    return value


def assert_nothing_left(mark: str) -> None:
    """Nothing the session started still runs, after a grace: the holder lets go of its lock
    (what `Session.wait` waits for) before its process is gone, and the fake smolvm's watcher
    (smolvm's agent killing the guest on a disconnect) ends after smolvm's client, each on
    its own time under load."""
    assert_none_marked(mark)


def wait_exit(client: Client, session: Session) -> int:
    try:
        client.until(lambda g: g.exit_status is not None, "EXIT", timeout=30)
    except AssertionError as exc:  # what the holder said and recorded (a holder killed while
        # ending its session, as ProcWatch once did, shows as no EXIT)
        session.wait(20)
        log = Path(session._dir.file("holder.log"))
        state = session._dir.read_json("state.json")
        raise AssertionError(f"{exc}\nholder.log: {log.read_text() if log.exists() else None!r}"
                             f"\nstate.json: {state}") from None
    assert client.got.exit_status is not None
    return client.got.exit_status


def test_exec_agent_detached(fake_smolvm: Any, mark: str, require_node_user: Any) -> None:
    image_machine(fake_smolvm, "m")
    bottle = SmolmachinesBottle(
        "m", agent_command="/bin/sh", agent_prompt_mode="none", secret_env={"API_KEY": SECRET}
    )
    with ProcWatch(os.getpid(), SECRET.encode()) as watch:
        session = bottle.exec_agent(
            ["-c", 'echo "as $(id -un) key=$API_KEY"; read x; echo "got $x"; exit 5'],
            detach=True,
        )
        assert isinstance(session, Session)
        assert (session.name, session.machine) == ("m", "m")
        client = Client.attach(session)
        # Typed at once: the holder holds keys until smolvm's client has gone raw.
        client.keys(b"hi\r")
        client.expect(b"as node key=" + SECRET.encode())
        client.expect(b"got hi")
        watch.wait_rounds(3)
    assert wait_exit(client, session) == 5
    assert watch.cmdline_hits == []  # never on a command line
    assert session.wait(20) == 5
    info = sessions.find_session("m").info()
    assert (info.state, info.exit_status, info.teardown) == ("exited", 5, None)
    assert fake_smolvm.machine("m")["state"] == "running"  # not ours to tear down
    calls = [c for c in fake_smolvm.calls() if c[1:2] == ["exec"] and "--" in c]
    assert calls[-1][:6] == ["machine", "exec", "--name", "m", "-i", "-t"]
    assert_nothing_left(mark)


def test_launch_hands_its_teardown_to_the_detached_session(
    fake_smolvm: Any, mark: str, require_node_user: Any
) -> None:
    spec = root_spec("m1", agent_command="/bin/sh", prompt_mode="none")
    with get_backend("smolmachines").launch(spec) as bottle:
        session = bottle.run_agent(["-c", "read x; exit 3"], detach=True)
        with pytest.raises(InvalidInputError, match="already belongs to detached session 'm1'"):
            bottle.run_agent(["-c", "true"], detach=True)
    # The launch is over; its machine is the session's now.
    assert fake_smolvm.machine("m1")["state"] == "running"
    assert session.teardown_plan is not None
    assert session.info().teardown == "pending"
    client = Client.attach(session)
    client.keys(b"x\r")
    assert wait_exit(client, session) == 3
    assert session.wait(60) == 3
    assert fake_smolvm.machine("m1") is None  # stopped and deleted by the holder
    assert session.info().teardown == "done"
    assert [c[1] for c in fake_smolvm.calls()[-2:]] == ["stop", "delete"]
    assert_nothing_left(mark)


def test_holder_killed_outright_ends_smolvms_client_and_the_guest(
    fake_smolvm: Any, mark: str, shared_dir: Path
) -> None:
    guest_pid = shared_dir / "guest-pid"  # the guest runs as node
    spec = root_spec("m1", agent_command="/bin/sh", prompt_mode="none")
    with get_backend("smolmachines").launch(spec) as bottle:
        session = bottle.run_agent(["-c", f"echo $$ > {guest_pid}; exec sleep 300"], detach=True)
    wait_for(lambda: guest_pid.exists() and guest_pid.read_text().strip(), "the guest")
    guest = int(guest_pid.read_text())
    state = session._dir.read_json("state.json")
    assert state is not None
    client_pid = state["child_pid"]
    assert alive(client_pid) and alive(guest)
    holder = session.pid
    assert holder is not None
    os.kill(holder, signal.SIGKILL)
    wait_gone(holder)
    wait_gone(client_pid)  # smolvm's client: hung up
    wait_gone(guest)  # killed as on any disconnect
    assert_nothing_left(mark)
    info = sessions.list_sessions()[0]
    assert (info.name, info.state, info.exit_status, info.teardown) == ("m1", "lost", None,
                                                                        "pending")  # fmt: skip
    assert fake_smolvm.machine("m1")["state"] == "running"
    # Whoever notices does the launch's teardown, once.
    assert session.teardown() == "done"
    assert fake_smolvm.machine("m1") is None
    assert session.teardown() == "done"
    session.remove()
    assert sessions.list_sessions() == []


def test_detach_refuses_what_cannot_start(fake_smolvm: Any, mark: str) -> None:
    image_machine(fake_smolvm, "m", state="stopped")
    bottle = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none")
    with pytest.raises(MachineNotRunningError, match="'m' is not running"):
        bottle.exec_agent([], detach=True)
    with pytest.raises(InvalidInputError, match="a detached session is a terminal session"):
        bottle.run_agent([], tty=False, detach=True)
    with pytest.raises(InvalidInputError, match="give detach=True too"):
        bottle.run_agent([], session="x")  # type: ignore[call-overload]
    assert sessions.list_sessions() == []
