"""Who guest commands run as, at the smolvm versions where that changed, through the strict fake.

smolvm runs an image machine's commands as the image's USER: `-i`/`-t` sessions since 1.3.0
(commit 5bbffccf), captured exec since 1.6.0 (957bd755); a bare VM runs them as root and has no
other user; 1.9.3 has no exec option to choose (`ExecCmd` in smolvm's src/cli/machine.rs;
tests/fake_smolvm/README.md, "Versions"). The fake really
runs guest commands as that user on this host, so `runuser` really fails when it is not root.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import RetryPolicy, SmolmachinesBottle, SmolmachinesBottleBackend
from bottle.errors import GuestUserError

FAST = RetryPolicy(attempts=2, delay=0.01)
IMAGE = "bottle-test/agent:1"  # a registry reference in the fake's image table, USER node
ID = 'printf "%s|%s|%s|%s" "$(id -un)" "$HOME" "$USER" "$(pwd)"'



@pytest.fixture
def node_image(fake_smolvm: Any, require_node_user: Any) -> str:
    fake_smolvm.add_image(IMAGE, user="node", workdir="/home/node")
    return IMAGE


def _version(fake_smolvm: Any, version: str) -> None:
    fake_smolvm.set_fault(VERSION=version)


def _execs(fake_smolvm: Any) -> list[list[str]]:
    """Guest commands run (not bottle's `machine exec --help` look for a --user option)."""
    return [c for c in fake_smolvm.calls() if c[1:2] == ["exec"] and "--help" not in c]


def _guest_part(call: list[str]) -> list[str]:
    return call[call.index("--") + 1 :]


# --- an image whose USER is node -----------------------------------------------------------


@pytest.mark.parametrize("version", ["1.6.0", "1.9.3"])
def test_image_user_node_runs_directly_as_node(
    fake_smolvm: Any, node_image: str, shared_dir: Path, version: str, capfd: Any
) -> None:
    _version(fake_smolvm, version)
    fake_smolvm.create("m", image=node_image)
    b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none",
                           agent_workdir=str(shared_dir), retry=FAST)  # fmt: skip
    assert b.guest_user() == "node"
    assert b.guest_user(interactive=True) == "node"
    result = b.exec(ID, user="node", workdir=str(shared_dir))
    assert result.stdout == f"node|/home/node|node|{shared_dir}", result
    capfd.readouterr()
    assert b.exec_agent(["-c", ID], tty=False) == 0
    assert capfd.readouterr().out == f"node|/home/node|node|{shared_dir}"
    guest_commands = [_guest_part(c) for c in _execs(fake_smolvm)]
    assert guest_commands[0] == ["id"]  # learnt once, for both kinds on these versions
    assert [c for c in guest_commands if c == ["id"]] == [["id"]]
    assert not any("runuser" in c for c in guest_commands)


@pytest.mark.parametrize("version", ["1.6.0", "1.9.3"])
def test_image_user_node_cannot_become_root_clear_error(
    fake_smolvm: Any, node_image: str, version: str
) -> None:
    _version(fake_smolvm, version)
    fake_smolvm.create("m", image=node_image)
    b = SmolmachinesBottle("m", agent_user="root", agent_command="/bin/sh",
                           agent_prompt_mode="none", retry=FAST)  # fmt: skip
    result = b.exec("id -un", user="root")
    assert result.returncode == 1
    with pytest.raises(GuestUserError) as info:
        result.check()
    message = str(info.value)
    assert "runs guest commands as 'node'" in message
    assert "cannot run as 'root'" in message
    assert f"smolvm {version}" in message
    assert (info.value.running_as, info.value.wanted) == ("node", "root")
    outcome = b.run_agent(["-c", "true"], tty=False)
    assert outcome.returncode == 1
    assert isinstance(outcome.error, GuestUserError)
    # Nothing ran but the probe: no runuser that could only fail.
    assert [_guest_part(c) for c in _execs(fake_smolvm)] == [["id"]]


def test_smolvm_1_3_to_1_5_interactive_as_node_captured_as_root(
    fake_smolvm: Any, node_image: str, shared_dir: Path, capfd: Any
) -> None:
    _version(fake_smolvm, "1.3.0")
    fake_smolvm.create("m", image=node_image)
    b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none",
                           agent_workdir=str(shared_dir), retry=FAST)  # fmt: skip
    assert b.guest_user() == "root"
    assert b.guest_user(interactive=True) == "node"
    assert b.exec(ID, user="node", workdir=str(shared_dir)).stdout.startswith("node|/home/node")
    assert b.exec("id -un", user="root").stdout == "root\n"
    capfd.readouterr()
    assert b.exec_agent(["-c", ID], tty=False) == 0
    assert capfd.readouterr().out.startswith("node|/home/node|node|")
    guest = [_guest_part(c) for c in _execs(fake_smolvm)]
    assert guest[-1][0] == "env"  # the session: already node, no runuser
    assert any(c[:3] == ["runuser", "-u", "node"] for c in guest)  # captured: from root


def test_smolvm_1_0_2_runs_everything_as_root_and_switches(
    fake_smolvm: Any, node_image: str, shared_dir: Path, capfd: Any
) -> None:
    _version(fake_smolvm, "1.0.2")
    fake_smolvm.create("m", image=node_image)
    b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none",
                           agent_workdir=str(shared_dir), retry=FAST)  # fmt: skip
    assert b.guest_user() == b.guest_user(interactive=True) == "root"
    assert b.exec(ID, user="node", workdir=str(shared_dir)).stdout == (
        f"node|/home/node|node|{shared_dir}"
    )
    capfd.readouterr()
    assert b.exec_agent(["-c", ID], tty=False) == 0
    assert capfd.readouterr().out == f"node|/home/node|node|{shared_dir}"
    assert _guest_part(_execs(fake_smolvm)[-1])[:4] == ["runuser", "-u", "node", "--"]


# --- a bare VM: root only -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.2", "1.6.0", "1.9.3"])
def test_bare_vm_runs_as_root(fake_smolvm: Any, version: str, capfd: Any) -> None:
    _version(fake_smolvm, version)
    fake_smolvm.create("m")
    b = SmolmachinesBottle("m", agent_user="root", agent_command="/bin/sh",
                           agent_prompt_mode="none", retry=FAST)  # fmt: skip
    assert b.guest_user() == "root"
    assert b.exec('printf "%s|%s" "$(id -un)" "$HOME"', user="root").stdout == "root|/root"
    capfd.readouterr()
    assert b.exec_agent(["-c", "id -un; pwd"], tty=False) == 0
    assert capfd.readouterr().out == "root\n/root\n"
    assert not any("runuser" in _guest_part(c) for c in _execs(fake_smolvm))


# --- smolvm's own user option (1.14.0 and later) -----------------------------------------------


@pytest.mark.parametrize("version", ["1.14.0", "1.16.0"])
def test_smolvms_user_option_is_used_when_exec_help_shows_it(
    fake_smolvm: Any, node_image: str, shared_dir: Path, version: str
) -> None:
    # From release notes, not source: smolvm PR #1148 (`--user`, 1.14.0). On an image whose
    # USER is node, root is out of reach without it (test_image_user_node_* above).
    _version(fake_smolvm, version)
    fake_smolvm.create("m", image=node_image)
    b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none", retry=FAST)
    assert b.exec("id -un", user="root").stdout == "root\n"
    assert b.exec("id -un", user="node").stdout == "node\n"
    calls = _execs(fake_smolvm)
    assert [c[c.index("--user") + 1] for c in calls] == ["root", "node"]
    assert not any(_guest_part(c) == ["id"] for c in calls)  # nothing to learn
    assert not any("runuser" in _guest_part(c) for c in calls)
    assert b.agent_argv(["x"])[5:11] == ["-i", "-t", "-w", "/home/node", "--user", "node"]
    assert b.exec_agent(["-c", "id -un"], tty=False) == 0
    assert b.run_agent(["-c", "exit 1"], tty=False).error is None  # the agent's own status


def test_no_user_option_before_1_14_0(fake_smolvm: Any, node_image: str) -> None:
    _version(fake_smolvm, "1.13.1")
    fake_smolvm.create("m", image=node_image)
    result = SmolmachinesBottle("m", retry=FAST).exec("id -un", user="root")
    assert isinstance(result.error, GuestUserError)
    assert not any("--user" in c for c in _execs(fake_smolvm))


# --- cp_in owner -------------------------------------------------------------------------------


def test_cp_in_owner_uses_cp_uid_gid_on_1_9(
    fake_smolvm: Any, node_image: str, shared_dir: Path, tmp_path: Path
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # cp --uid/--gid exist from 1.9.0
    fake_smolvm.create("m", image=node_image)
    src = tmp_path / "p.md"
    src.write_text("prompt")
    dest = shared_dir / "p.md"
    SmolmachinesBottle("m", retry=FAST).cp_in(src, str(dest), owner="node")
    node = pwd.getpwnam("node")
    assert (dest.stat().st_uid, dest.stat().st_gid) == (node.pw_uid, node.pw_gid)
    cp = next(c for c in fake_smolvm.calls() if c[1:2] == ["cp"])
    assert cp[2:6] == ["--uid", str(node.pw_uid), "--gid", str(node.pw_gid)]


def test_cp_in_owner_before_1_9_chowns_as_root(
    fake_smolvm: Any, node_image: str, shared_dir: Path, tmp_path: Path
) -> None:
    _version(fake_smolvm, "1.0.2")  # captured exec as root here
    fake_smolvm.create("m", image=node_image)
    src = tmp_path / "p.md"
    src.write_text("prompt")
    dest = shared_dir / "p.md"
    SmolmachinesBottle("m", retry=FAST).cp_in(src, str(dest), owner="node")
    assert dest.stat().st_uid == pwd.getpwnam("node").pw_uid
    cp = next(c for c in fake_smolvm.calls() if c[1:2] == ["cp"])
    assert "--uid" not in cp


def test_cp_in_owner_impossible_is_a_clear_error(
    fake_smolvm: Any, node_image: str, shared_dir: Path, tmp_path: Path
) -> None:
    _version(fake_smolvm, "1.6.0")  # captured exec as node, and no cp --uid yet
    fake_smolvm.create("m", image=node_image)
    src = tmp_path / "p.md"
    src.write_text("prompt")
    with pytest.raises(GuestUserError, match=r"smolvm 1\.6\.0 has no `cp --uid/--gid`"):
        SmolmachinesBottle("m", retry=FAST).cp_in(src, str(shared_dir / "p.md"), owner="node")
    assert not (shared_dir / "p.md").exists()
    assert "cp" not in fake_smolvm.subcommands()


# --- launch on the agent image -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.2", "1.6.0", "1.9.3"])
def test_launch_on_an_image_whose_user_is_node(
    fake_smolvm: Any, node_image: str, shared_dir: Path, version: str
) -> None:
    _version(fake_smolvm, version)
    prompt = shared_dir / "host-prompt.md"
    prompt.write_text("be careful\n")
    guest_prompt = shared_dir / "guest" / "prompt.md"
    workdir = shared_dir / "work dir"
    spec = LaunchSpec(
        "m1", image=node_image, prompt_file=str(prompt), prompt_guest_path=str(guest_prompt),
        workdir=str(workdir), agent_command="/bin/sh", prompt_mode="none",
        env={"PATH": "/opt/agent/bin:/usr/bin:/bin"},
    )  # fmt: skip
    backend = SmolmachinesBottleBackend(retry=FAST)
    out = shared_dir / "out"
    with backend.launch(spec) as bottle:
        status = bottle.exec_agent(
            ["-c", f'{ID} > "{out}"; printf "|%s" "$PATH" >> "{out}"'], tty=False
        )
    assert status == 0
    assert out.read_text() == f"node|/home/node|node|{workdir}|/opt/agent/bin:/usr/bin:/bin"
    node = pwd.getpwnam("node")
    assert guest_prompt.read_text() == "be careful\n"
    # 1.6.0: captured exec runs as node and cp has no --uid: a root-owned copy node can read.
    assert guest_prompt.stat().st_uid == (0 if version == "1.6.0" else node.pw_uid)
    assert workdir.stat().st_uid == node.pw_uid
    create = next(c for c in fake_smolvm.calls() if c[1:2] == ["create"])
    assert "--net" in create  # a registry image gets networking
    assert fake_smolvm.machine("m1") is None
    assert os.path.exists(shared_dir)
