"""SmolmachinesBottle command lines as exact lists, prompt modes, providers, validation.

The working directory is smolvm's `-w` (no shell): checked by really running the agent through
the fake smolvm, for fixed awkward workdirs and (hypothesis) for any workdir, env value and
argument. Command lines need a running machine: the bottle asks the guest who it runs as.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from harness.backend import image_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottle.agent_provider import PROVIDERS, PromptMode, agent_args, get_provider, prompt_args
from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import RetryPolicy, SmolmachinesBottle, home_for
from bottle.errors import UnknownProviderError

EXEC = ["smolvm", "machine", "exec", "--name", "m"]
AS_NODE = ["runuser", "-u", "node", "--", "env", "HOME=/home/node", "USER=node"]


@pytest.fixture
def machine(fake_smolvm: Any) -> str:
    """A running machine whose guest commands run as root, with a `node` user (like node:22), on
    a smolvm without `exec --user` (before 1.14.0), so bottle switches with runuser; the command
    lines with smolvm's own option are test_agent_argv_with_smolvms_user_option's."""
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m")
    return "m"


@pytest.mark.parametrize("version", ["1.14.0", "1.16.0"])
def test_agent_argv_with_smolvms_user_option(fake_smolvm: Any, version: str) -> None:
    # From release notes, not source: smolvm PR #1148's `exec --user` (1.14.0). bottle sees it
    # in `exec --help` and hands the user to smolvm: no runuser, nothing to learn first.
    fake_smolvm.set_fault(VERSION=version)
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m", secret_env={"TOKEN": "v"})
    assert b.agent_argv(["--resume", "x"]) == [
        *EXEC, "-i", "-t", "-w", "/home/node", "--user", "node", "-e", "TOKEN", "--",
        "env", "HOME=/home/node", "USER=node", "claude", "--resume", "x",
    ]  # fmt: skip
    assert SmolmachinesBottle("m", agent_user="root").agent_argv([], tty=False) == [
        *EXEC, "-i", "-w", "/root", "--user", "root", "--", "env", "HOME=/root", "USER=root",
        "claude",
    ]  # fmt: skip
    assert [c[1:2] + c[-1:] for c in fake_smolvm.calls()[1:]] == [["exec", "--help"]]


def test_agent_argv_default_shape_tty_and_not(machine: str) -> None:
    b = SmolmachinesBottle(machine)
    assert b.agent_argv(["--resume", "x"]) == [
        *EXEC, "-i", "-t", "-w", "/home/node", "--", *AS_NODE, "claude", "--resume", "x",
    ]  # fmt: skip
    # Without a tty: -i (stdin forwarded, output streamed), never a login shell.
    assert b.agent_argv([], tty=False) == [
        *EXEC, "-i", "-w", "/home/node", "--", *AS_NODE, "claude",
    ]  # fmt: skip


def test_agent_argv_env_in_insertion_order_and_prompt_append_file(machine: str) -> None:
    b = SmolmachinesBottle(
        "m", prompt_path="/home/node/.bottle/p.md", guest_env={"Z": "1", "A": "two words"}
    )
    assert b.agent_argv(["-p", "hi"], tty=False) == [
        *EXEC, "-i", "-w", "/home/node", "--", *AS_NODE, "Z=1", "A=two words",
        "claude", "--append-system-prompt-file", "/home/node/.bottle/p.md", "-p", "hi",
    ]  # fmt: skip


def test_agent_argv_workdir_is_smolvms_w_never_a_shell(machine: str) -> None:
    b = SmolmachinesBottle("m", agent_workdir="/work/my dir")
    argv = b.agent_argv(["a"], tty=False)
    assert argv == [*EXEC, "-i", "-w", "/work/my dir", "--", *AS_NODE, "claude", "a"]
    assert "sh" not in argv
    assert "-lc" not in argv


def test_default_workdir_follows_the_agent_user() -> None:
    assert SmolmachinesBottle("m").agent_workdir == "/home/node"
    assert SmolmachinesBottle("m", agent_user="root").agent_workdir == "/root"
    assert SmolmachinesBottle("m", agent_user="dev").agent_workdir == "/home/dev"
    assert SmolmachinesBottle("m", agent_user="dev", agent_workdir="/w").agent_workdir == "/w"


def test_agent_argv_read_prompt_file_puts_user_argv_first(machine: str) -> None:
    b = SmolmachinesBottle(
        "m",
        prompt_path="/p.md",
        agent_command="codex",
        agent_prompt_mode="read_prompt_file",
        agent_provider_template="codex",
    )
    argv = b.agent_argv(["--model", "o3"], tty=False)
    tail = argv[argv.index("codex") :]
    assert tail[:3] == ["codex", "--model", "o3"]
    assert len(tail) == 4
    assert "/p.md" in tail[3]
    assert "read" in tail[3].lower()


def test_agent_argv_other_user_and_root(machine: str) -> None:
    b = SmolmachinesBottle("m", agent_user="dev")
    assert b.agent_argv([], tty=False)[6:] == [
        "-w", "/home/dev", "--",
        "runuser", "-u", "dev", "--", "env", "HOME=/home/dev", "USER=dev", "claude",
    ]  # fmt: skip
    # Already root: no switch at all.
    root = SmolmachinesBottle("m", agent_user="root")
    assert root.agent_argv([], tty=False)[6:] == [
        "-w", "/root", "--", "env", "HOME=/root", "USER=root", "claude",
    ]  # fmt: skip
    assert home_for("root") == "/root"
    assert home_for("node") == "/home/node"
    assert b.env_assignments("root") == ["HOME=/root", "USER=root"]


def test_secret_names_go_before_dashdash_and_values_nowhere(machine: str) -> None:
    b = SmolmachinesBottle("m", guest_env={"A": "1"}, secret_env={"TOKEN": "s3cr3t-value"})
    argv = b.agent_argv(["x"])
    assert argv[:12] == [*EXEC, "-i", "-t", "-w", "/home/node", "-e", "TOKEN", "--"]
    assert not any("s3cr3t-value" in a for a in argv)
    assert "s3cr3t-value" not in repr(b)
    assert b.child_env()["TOKEN"] == "s3cr3t-value"
    spec = LaunchSpec("m", secret_env={"TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(spec)
    assert "TOKEN" in repr(spec)


def test_relay_argv_single_command_line(fake_smolvm, machine: str) -> None:
    b = SmolmachinesBottle("m")
    assert b.relay_argv(["x"]) == [
        sys.executable, "-m", "bottle.relay", "--output", "direct", "--machine", "m",
        "--hold-until-raw", "--",
        str(fake_smolvm.path), *b.agent_argv(["x"])[1:],
    ]  # fmt: skip


# --- prompt modes and providers ----------------------------------------------------------


def test_agent_args_modes() -> None:
    assert agent_args("append_file", "/p", ["a"]) == ["--append-system-prompt-file", "/p", "a"]
    assert agent_args(PromptMode.NONE, "/p", ["a"]) == ["a"]
    assert agent_args("append_file", None, ["a"]) == ["a"]
    out = agent_args("read_prompt_file", "/p", ["a"], provider="codex")
    assert out[0] == "a"
    assert "/p" in out[1]
    assert len(out) == 2


def test_unknown_prompt_mode_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="append_file, read_prompt_file, none"):
        prompt_args("sideways", "/p", [])
    with pytest.raises(ValueError, match="valid modes"):
        SmolmachinesBottle("m", agent_prompt_mode="sideways")


def test_unknown_provider_is_clear() -> None:
    with pytest.raises(UnknownProviderError, match="known providers: claude, codex"):
        get_provider("gpt-shell")
    with pytest.raises(ValueError, match="unknown agent provider"):
        SmolmachinesBottle("m", agent_provider_template="gpt-shell")


def test_providers_are_data() -> None:
    assert PROVIDERS["claude"].prompt_mode is PromptMode.APPEND_FILE
    assert PROVIDERS["claude"].append_flag == "--append-system-prompt-file"
    assert PROVIDERS["codex"].prompt_mode is PromptMode.READ_PROMPT_FILE
    with pytest.raises(ValueError, match="no flag"):
        prompt_args("append_file", "/p", [], provider="codex")


# --- validation before anything runs -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"guest_env": {"1A": "x"}}, "variable name"),
        ({"guest_env": {"A-B": "x"}}, "variable name"),
        ({"guest_env": {"A": "x\0y"}}, "NUL"),
        ({"secret_env": {"T": "x\0"}}, "NUL"),
        ({"secret_env": {"HOME": "x"}}, "reserved"),
        ({"guest_env": {"T": "1"}, "secret_env": {"T": "2"}}, "both"),
        ({"agent_user": "-root"}, "user name"),
        ({"agent_user": "a b"}, "user name"),
        ({"agent_user": "a:b"}, "user name"),
        ({"agent_workdir": "rel/dir"}, "absolute"),
        ({"agent_workdir": "/a/../etc"}, r"'\.\.'"),
        ({"agent_workdir": "/a\0"}, "NUL"),
        ({"prompt_path": "p.md"}, "absolute"),
        ({"agent_command": "cl\0aude"}, "NUL"),
        ({"agent_command": ""}, "empty"),
        ({"terminal_color": "red\x1b]0;x"}, "colour"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_problem(
    kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        SmolmachinesBottle("m", **kwargs)  # type: ignore[arg-type]


def test_bad_argv_script_and_user_at_call_time(fake_smolvm) -> None:
    b = SmolmachinesBottle("m")
    with pytest.raises(ValueError, match="NUL"):
        b.agent_argv(["a\0b"])
    with pytest.raises(ValueError, match="NUL"):
        b.exec("echo \0")
    with pytest.raises(ValueError, match="user name"):
        b.exec("true", user="no body")
    with pytest.raises(ValueError, match="sequence of strings"):
        b.agent_argv("claude")  # type: ignore[arg-type]
    # Nothing reached smolvm, not even the version check.
    assert fake_smolvm.calls() == []


def test_bad_machine_name() -> None:
    with pytest.raises(ValueError, match="machine name"):
        SmolmachinesBottle("bad name")
    with pytest.raises(ValueError, match="machine name"):
        LaunchSpec("a--b")


def test_retry_policy_is_a_value() -> None:
    p = RetryPolicy()
    assert (p.attempts, p.delay, p.statuses) == (2, 1.0, frozenset({137}))
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    assert RetryPolicy(statuses={1, 2}).statuses == frozenset({1, 2})  # type: ignore[arg-type]


# --- the working directory, run for real ---------------------------------------------------

PROBE = "import json, os, sys; print(json.dumps([os.getcwd(), os.environ.get('V'), sys.argv[1:]]))"


def _run_agent(workdir: str, value: str, args: list[str], capfd: Any) -> list[object]:
    """Run a probe agent through the fake smolvm (as node, in `workdir`); what it saw."""
    b = SmolmachinesBottle(
        "m",
        agent_command="/usr/bin/python3",
        agent_prompt_mode="none",
        agent_workdir=workdir,
        guest_env={"V": value},
    )
    capfd.readouterr()
    status = b.exec_agent(["-c", PROBE, *args], tty=False)
    out = capfd.readouterr().out
    assert status == 0, out
    result: list[object] = json.loads(out.splitlines()[-1])
    return result


AWKWARD = [
    "with space",
    "it's",
    'dq"uote',
    "$HOME",
    "$(touch pwned)",
    "`touch pwned`",
    "new\nline",
    "back\\slash",
    "-leading-dash",
    "*glob?[x]",
    "tab\there",
    "ünïcødé ✓",
    "semi;colon&&amp|pipe",
    "trailing\\",
    "'",
]


@pytest.mark.parametrize("name", AWKWARD)
def test_awkward_workdirs_reach_the_agent(
    name: str, machine: str, shared_dir: Path, capfd: Any
) -> None:
    workdir = shared_dir / name
    workdir.mkdir()
    cwd, value, args = _run_agent(str(workdir), name, [name, "", "$V"], capfd)
    assert cwd == str(workdir)
    assert value == name
    assert args == [name, "", "$V"]
    assert not (shared_dir / "pwned").exists()
    assert not Path("pwned").exists()


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
_dirname = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
    min_size=1,
    max_size=40,
).filter(lambda s: s not in (".", "..") and len(s.encode()) < 200)


# Slow step only: test_awkward_workdirs_reach_the_agent checks fixed awkward examples.
@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=_dirname, value=_text, args=st.lists(_text, max_size=5))
def test_any_workdir_env_value_and_argument_reach_the_agent(
    name: str, value: str, args: list[str], machine: str, shared_dir: Path, capfd: Any
) -> None:
    with tempfile.TemporaryDirectory(prefix="bottle-hyp-", dir=shared_dir) as base:
        os.chmod(base, 0o755)
        workdir = os.path.join(base, name)
        os.mkdir(workdir)
        cwd, got_value, got_args = _run_agent(workdir, value, args, capfd)
    assert cwd == workdir
    assert got_value == value
    assert got_args == args
