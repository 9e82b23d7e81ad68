"""Everyday conveniences: shell completion (really completing, in bash, zsh and fish),
`--version`, the config file, `launch --dry-run`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, CLI_FAILURE, run_bottle
from harness.tmux import Tmux

from bottle.cli import completion
from bottle.cli._command import Entry
from bottle.cli._main import COMMANDS

PY = sys.executable
BOTTLE = [PY, "-m", "bottle"]
CONSOLE_SCRIPT = str(Path(PY).parent / "bottle")

pytestmark = pytest.mark.usefixtures("test_images")


bottle = run_bottle


def _shell(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/bootstrap installs it)")
    return found


# --- completion --------------------------------------------------------------------------------

BASH_DRIVER = r"""
source "$1"; shift
# As bash's readline would call it: the words so far, the index of the one being completed.
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()
_bottle
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(script: Path, *words: str) -> list[str]:
    proc = subprocess.run(
        [_shell("bash"), "--norc", "-c", BASH_DRIVER, "driver", str(script), *words],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return sorted(line for line in proc.stdout.splitlines() if line)


@pytest.fixture
def bash_script(tmp_path: Path) -> Path:
    proc = subprocess.run([CONSOLE_SCRIPT, "completion", "bash"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "bottle.bash"
    path.write_text(proc.stdout)
    return path


def test_bash_completes_commands_options_values_and_machines(
    fake_smolvm: Any, bash_script: Path
) -> None:
    fake_smolvm.create("demo")
    fake_smolvm.create("other", running=False)
    b = CONSOLE_SCRIPT  # the completion asks this bottle for machine names
    assert bash_complete(bash_script, b, "") == sorted(COMMANDS)
    assert bash_complete(bash_script, b, "st") == ["stop"]
    assert bash_complete(bash_script, b, "-") == sorted(
        ["-h", "--help", "--version", "-v", "--verbose", "-q", "--quiet"])  # fmt: skip
    assert bash_complete(bash_script, b, "-v", "r") == ["relay", "rm"]  # after a global option
    assert bash_complete(bash_script, b, "launch", "--net") == ["--net", "--network"]
    assert bash_complete(bash_script, b, "launch", "--network", "") == [
        "agent", "allow", "off", "open"]  # fmt: skip
    assert bash_complete(bash_script, b, "launch", "--network", "=", "a") == ["agent", "allow"]
    assert bash_complete(bash_script, b, "rm", "") == ["demo", "other"]
    assert bash_complete(bash_script, b, "rm", "-f", "o") == ["other"]
    assert bash_complete(bash_script, b, "stop", "demo", "") == ["demo", "other"]  # NAME...
    assert bash_complete(bash_script, b, "exec", "-n", "d") == ["demo"]
    assert bash_complete(bash_script, b, "exec", "--name", "d") == ["demo"]
    assert bash_complete(bash_script, b, "completion", "") == ["bash", "fish", "zsh"]
    assert bash_complete(bash_script, b, "launch", "--image", "") == []  # nothing to guess
    assert bash_complete(bash_script, b, "launch", "--", "--ne") == []  # the agent's
    assert "PATH" in bash_complete(bash_script, b, "launch", "--secret-env", "PAT")


def test_every_command_and_option_completes_from_its_parser(bash_script: Path) -> None:
    """Nothing is listed by hand: each command in the table, and each option its parser has,
    completes."""
    for name, entry in COMMANDS.items():
        assert bash_complete(bash_script, "bottle", name[:-1]).count(name) == 1
        if entry.command is None:
            continue
        parser = completion.spec_of(name, entry)
        options = {o for opt in parser.options for o in opt.names}
        assert options >= {"-h", "--help", "-v", "--verbose", "-q", "--quiet"}
        assert set(bash_complete(bash_script, "bottle", name, "-")) == options, name


def test_a_new_command_completes_with_no_edit(tmp_path: Path, monkeypatch: Any) -> None:
    module = tmp_path / "bottle_test_newcmd.py"
    module.write_text(textwrap.dedent("""
        from bottle.cli._command import Command

        class Frob(Command):
            def configure(self, parser):
                parser.add_argument("--level", choices=["low", "high"])
                parser.add_argument("--out-file")
                parser.add_argument("names", nargs="+", metavar="NAME")

            def run(self, ns, extra):
                return 0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    table = {**COMMANDS, "frob": Entry("bottle_test_newcmd", "Frob", "frobnicate")}
    script = tmp_path / "c.bash"
    script.write_text(completion.bash(completion.specs(table)))
    assert bash_complete(script, "bottle", "fr") == ["frob"]
    assert bash_complete(script, "bottle", "frob", "--l") == ["--level"]
    assert bash_complete(script, "bottle", "frob", "--level", "") == ["high", "low"]
    (tmp_path / "out-here").write_text("")
    os.chdir(tmp_path)
    assert bash_complete(script, "bottle", "frob", "--out-file", "out-") == ["out-here"]
    fish = completion.fish(completion.specs(table))
    assert "complete -c bottle -n '__bottle_after frob' -l level -x -a 'low high'" in fish


def test_fish_completes(fake_smolvm: Any, tmp_path: Path) -> None:
    fake_smolvm.create("demo")
    script = tmp_path / "bottle.fish"
    script.write_text(bottle("completion", "fish").stdout)

    def fish(line: str) -> list[str]:
        # fish's own completion engine, on the command line as typed.
        command = f"source {shlex.quote(str(script))}; complete -C {shlex.quote(line)}"
        proc = subprocess.run([_shell("fish"), "--no-config", "-c", command],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return sorted(line.split("\t")[0] for line in proc.stdout.splitlines())

    assert fish(f"{CONSOLE_SCRIPT} st") == ["stop"]
    assert fish(f"{CONSOLE_SCRIPT} rm ") == ["demo"]
    assert fish(f"{CONSOLE_SCRIPT} rm -f d") == ["demo"]
    assert fish(f"{CONSOLE_SCRIPT} launch --network ") == ["agent", "allow", "off", "open"]
    assert fish(f"{CONSOLE_SCRIPT} completion ") == ["bash", "fish", "zsh"]
    assert fish(f"{CONSOLE_SCRIPT} launch --rec") == ["--record", "--record-input"]
    assert fish(f"{CONSOLE_SCRIPT} launch -- --rec") == []  # the agent's


def test_zsh_completes_in_a_terminal(fake_smolvm: Any) -> None:
    """zsh, as a person uses it: typed into a terminal (tmux), Tab, the line it completes."""
    fake_smolvm.create("demo-machine")
    zsh = _shell("zsh")
    setup = (f"autoload -U compinit && compinit -u && source <({shlex.quote(CONSOLE_SCRIPT)} "
             "completion zsh) && PS1='READY%% '")  # fmt: skip
    pane = Tmux(f"{shlex.quote(zsh)} -f", {**os.environ, "PATH": f"{Path(PY).parent}:"
                                            f"{os.environ['PATH']}"})  # fmt: skip
    try:
        pane.send(setup, "Enter")
        pane.wait(lambda ls: ls and ls[-1].startswith("READY%"), "the prompt")
        pane.send("bottle sto", "Tab")
        pane.wait(lambda ls: ls[-1].rstrip() == "READY% bottle stop", "bottle sto<Tab>")
        pane.send(" demo-m", "Tab")
        pane.wait(lambda ls: ls[-1].rstrip() == "READY% bottle stop demo-machine",
                  "demo-m<Tab>")  # fmt: skip
    finally:
        pane.close()


# --- --version -------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["native", "pure"])
def test_version_tells_the_relay_and_the_smolvm(fake_smolvm: Any, impl: str) -> None:
    env = {**os.environ, "FAKE_SMOLVM_VERSION": "1.9.3"}
    if impl == "pure":
        env["BOTTLE_NO_EXTENSIONS"] = "1"
    proc = bottle("--version", env=env)
    assert proc.returncode == 0, proc.stderr
    relay = ("native (bottle._ptyrelay)" if impl == "native"
             else "pure (BOTTLE_NO_EXTENSIONS is set)")  # fmt: skip
    assert proc.stdout == (f"bottle 0.1.0\nrelay: {relay}\n"
                           f"smolvm: 1.9.3 at {fake_smolvm.path}\n")  # fmt: skip


def test_version_never_fails_for_want_of_a_smolvm(fake_smolvm: Any, tmp_path: Path) -> None:
    gone = bottle("--version", env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert gone.returncode == 0
    assert gone.stdout.splitlines()[2].startswith("smolvm: not found (smolvm not found on PATH")
    old = bottle("--version", env={**os.environ, "FAKE_SMOLVM_VERSION": "0.9.0"})
    assert old.returncode == 0
    assert old.stdout.splitlines()[2] == (
        f"smolvm: 0.9.0 at {fake_smolvm.path} (too old: bottle needs 1.0.2 or later)")
    broken = tmp_path / "smolvm"
    broken.write_text("#!/bin/sh\necho nonsense\n")
    broken.chmod(0o755)
    odd = bottle("--version", env={**os.environ, "BOTTLE_SMOLVM": str(broken)})
    assert odd.returncode == 0
    assert odd.stdout.splitlines()[2].startswith("smolvm: version unknown (cannot read")


# --- the config file -------------------------------------------------------------------------


def write_config(text: str) -> Path:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "bottle" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def create_line(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return shlex.split(next(ln for ln in proc.stdout.splitlines() if " create " in ln))


def test_config_gives_defaults_and_flags_win(fake_smolvm: Any) -> None:
    fake_smolvm.add_host("github.com", "192.0.2.10")
    write_config("""
        # defaults for every command with these flags
        image = "bottle-test/agent:1"
        network = "agent"
        allow-hosts = ["github.com"]

        [launch]
        cpus = 2
        memory = 2048
    """)
    base = ["launch", "-n", "m1", "--dry-run"]
    create = create_line(bottle(*base))
    assert create[create.index("-I") + 1] == AGENT_IMAGE
    assert create[create.index("--cpus") + 1] == "2"
    assert create[create.index("--mem") + 1] == "2048"
    assert "github.com" in create and "--net" not in create
    # A flag wins, even one that gives the default's own value.
    create = create_line(bottle(*base, "--cpus", "3", "--image", "other:1"))
    assert create[create.index("--cpus") + 1] == "3"
    assert create[create.index("-I") + 1] == "other:1"
    # A network given on the command line takes the config's allow-list away with it ...
    assert "--allow-host" not in create_line(bottle(*base, "--network", "open"))
    assert "--allow-host" not in create_line(bottle(*base, "--net"))
    # ... and a list flag replaces the config's list.
    create = create_line(bottle(*base, "--allow-host", "api.example.org"))
    assert "api.example.org" in create and "github.com" not in create


def test_config_top_keys_reach_every_command_with_the_flag(fake_smolvm: Any) -> None:
    fake_smolvm.create("m")
    write_config('secret-env = ["BOTTLE_TEST_UNSET_SECRET"]\n')
    proc = bottle("exec", "-n", "m", "true")  # exec has --secret-env: the default applies
    assert proc.returncode == CLI_FAILURE
    assert "BOTTLE_TEST_UNSET_SECRET is not set" in proc.stderr
    assert bottle("ls").returncode == 0  # ls has no such flag: untouched


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('image = "node:22"\nimgae = "x"\n', ":2: unknown key 'imgae' (did you mean 'image'?)"),
        ('cpus = "2"\n', ":1: cpus: must be a whole number, not a string"),
        ("cpus = 0\n", ":1: cpus: must be 1 or more, not 0"),
        ('\n\nnetwork = "any"\n', ":3: network: must be one of open, off, agent, allow, not 'any'"),
        ('allow-hosts = "github.com"\n', ":1: allow-hosts: must be an array of strings"),
        ('allow-hosts = [\n  "http://x/"]\n', ":1: allow-hosts: invalid allowed host"),
        ('provider = "gpt"\n', ":1: provider: unknown agent provider 'gpt'"),
        ('secret-env = ["1A"]\n', ":1: secret-env: invalid environment variable name '1A'"),
        ('[lanch]\ncpus = 1\n', ":1: [lanch] is not a command (did you mean 'launch'?)"),
        ('[exec]\n"image" = "x"\n', ":2: exec has no --image"),
        ('image = "x\n', ":1: Illegal character"),
    ],
)
def test_a_bad_config_names_the_file_and_line(fake_smolvm: Any, text: str, said: str) -> None:
    path = write_config(text)
    proc = bottle("exec", "-n", "m", "true")
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.startswith(f"bottle: error: {path}{said}"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert fake_smolvm.calls() == []
    assert bottle("exec", "--help").returncode == 0  # help is still there to read


def test_bottle_config_names_another_file_or_none(fake_smolvm: Any, tmp_path: Path) -> None:
    write_config("cpus = 0\n")  # broken: only read when nothing else is named
    other = tmp_path / "other.toml"
    other.write_text("cpus = 5\n")
    proc = bottle("launch", "-n", "m1", "--user", "root", "--dry-run",
                  env={**os.environ, "BOTTLE_CONFIG": str(other)})  # fmt: skip
    assert create_line(proc)[create_line(proc).index("--cpus") + 1] == "5"
    proc = bottle("launch", "-n", "m1", "--user", "root", "--dry-run",
                  env={**os.environ, "BOTTLE_CONFIG": ""})  # fmt: skip
    assert "--cpus" not in create_line(proc)


# --- launch --dry-run ------------------------------------------------------------------------


def test_dry_run_prints_the_smolvm_commands_and_runs_none(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # labels since 1.8.0
    env = {**os.environ, "MY_API_KEY": "hunter2-dry"}
    proc = bottle("launch", "-n", "m1", "--image", AGENT_IMAGE, "--secret-env", "MY_API_KEY",
                  "-e", "MODE=dev", "--dry-run", "--", "--model", "sonnet", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "# creating",
        f"smolvm machine create -n m1 -I {AGENT_IMAGE} --net --label bottle.version=0.1.0 "
        "--label bottle.network=open",
        "# starting",
        "smolvm machine start -n m1",
        "# session",
        "#   who the guest runs commands as: the image's USER (assumed: node):",
        "smolvm machine exec --name m1 -- id",
        "#   assumed: 'claude' is there:",
        "smolvm machine exec --name m1 -w /home/node -e MY_API_KEY -- env HOME=/home/node "
        "USER=node MODE=dev /bin/sh -c 'command -v claude || { printf '\"'\"'PATH=%s\\n'\"'\"' "
        "\"$PATH\"; exit 127; }'",
        "#   as node if the image's USER is node; through `runuser -u node --` if it is root:",
        "smolvm machine exec --name m1 -i -t -w /home/node -e MY_API_KEY -- env HOME=/home/node "
        "USER=node MODE=dev claude --model sonnet",
        "# stopping",
        "smolvm machine stop -n m1",
        "# deleting",
        "smolvm machine delete -n m1 -f",
    ]
    assert "hunter2-dry" not in proc.stdout + proc.stderr
    assert set(fake_smolvm.subcommands()) <= {"--version", "status", "exec"}
    assert fake_smolvm.machine("m1") is None
    # What launch refuses, the dry run refuses.
    refused = bottle("launch", "-n", "m1", "--dry-run")
    assert refused.returncode == CLI_FAILURE
    assert "run the agent as root (--user root)" in refused.stderr
