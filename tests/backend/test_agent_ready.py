"""The agent is there before the session: the check before `exec_agent`/`run_agent` (and so
`bottle launch` and `bottle agent`), and `install_agent` / `--install-agent`.

No test image but NPM_IMAGE's kind has an agent CLI, and the fake's guest is this host (where no
`claude` is installed): the check really finds nothing. NPM_IMAGE's npm is the tests' fake one
(tests/harness/fake_npm/npm), which installs a stub of the CLI into the test's own prefix, on the
image's PATH; the real npm on this host is never run (no test image puts it first on PATH).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from harness.backend import (
    AGENT_IMAGE,
    CLI_FAILURE,
    LAUNCH,
    ROOT_IMAGE,
    add_npm_image,
    image_machine,
    root_spec,
)
from harness.backend import run_bottle as bottle

from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import SmolmachinesBottle, SmolmachinesBottleBackend
from bottle.errors import AgentInstallError, AgentNotFoundError, InvalidInputError
from bottle.results import Progress

# The provider's hosts and the npm registry, resolved from the fake's table (RFC 5737).
HOSTS = {
    "api.anthropic.com": "192.0.2.20",
    "platform.claude.com": "192.0.2.21",
    "registry.npmjs.org": "192.0.2.30",
    "npmjs.org": "192.0.2.31",
    # The test images' registry (Docker Hub), which bottle puts on the create line itself below
    # smolvm 1.3.5 (pytest --fake-smolvm-version).
    "docker.io": "192.0.2.40",
    "docker.com": "192.0.2.41",
}

pytestmark = pytest.mark.usefixtures("test_images")



@pytest.fixture
def exact(fake_smolvm: Any) -> None:
    """Exact stderr: a smolvm older than 1.8.1 puts its paste warning first (pytest
    --fake-smolvm-version)."""
    fake_smolvm.set_fault(VERSION="1.9.3")


def session_execs(fake_smolvm: Any) -> list[list[str]]:
    """Agent sessions: `-i` execs (captured ones have neither -i nor -t)."""
    return [c for c in fake_smolvm.calls() if c[1:2] == ["exec"] and "-i" in c]


@pytest.fixture
def npm_prefix(shared_dir: Path) -> Path:
    """Where the fake npm installs (on NPM_IMAGE's PATH; the guest's node can enter it)."""
    return shared_dir / "npm-global"


@pytest.fixture
def npm_image(fake_smolvm: Any, npm_prefix: Path) -> str:
    for name, address in HOSTS.items():
        fake_smolvm.add_host(name, address)
    return add_npm_image(fake_smolvm, npm_prefix)


# --- the check -----------------------------------------------------------------------------


@pytest.mark.usefixtures("exact")
def test_launch_without_the_agent_fails_before_the_session(fake_smolvm: Any) -> None:
    """Was: the whole create/start/provision, then `env: 'claude': No such file or directory`,
    exit 127. Now: one line naming the image, the user, the command and what to do."""
    proc = bottle(*LAUNCH, "--no-tty", "--", "--model", "sonnet")
    assert proc.returncode == CLI_FAILURE, proc.stderr
    # The progress lines of the steps (stderr is not a terminal) and one error line.
    (line,) = [ln for ln in proc.stderr.splitlines() if not ln.endswith(" s")]
    assert line.startswith(
        f"bottle: error: 'claude' is not found for user 'node' in machine 'm1' (image "
        f"{ROOT_IMAGE}), on its PATH=/usr/local/sbin:"
    ), line
    assert line.endswith(
        ": install it with --install-agent (npm install --global --no-fund --no-audit "
        "@anthropic-ai/claude-code), or use an image that has it"
    ), line
    assert session_execs(fake_smolvm) == []
    assert fake_smolvm.machine("m1") is None  # torn down
    assert fake_smolvm.subcommands()[-2:] == ["stop", "delete"]


@pytest.mark.usefixtures("exact")
def test_agent_in_a_machine_without_the_agent(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    proc = bottle("agent", "-n", "m", "--no-tty", "--provider", "codex")
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.startswith(
        f"bottle: error: 'codex' is not found for user 'node' in machine 'm' (image "
        f"{AGENT_IMAGE})"
    ), proc.stderr
    assert "--install-agent (npm install --global --no-fund --no-audit @openai/codex)" in (
        proc.stderr
    )
    assert session_execs(fake_smolvm) == []


@pytest.mark.usefixtures("exact")
def test_a_command_of_ones_own_gets_no_install_advice(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    proc = bottle("agent", "-n", "m", "--no-tty", "--agent-command", "my-agent")
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.rstrip().endswith(": use an image that has it"), proc.stderr
    assert "--install-agent" not in proc.stderr


def test_the_api_returns_127_with_the_reason(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m")
    assert b.exec_agent(["--model", "sonnet"], tty=False) == 127  # what `env` said before
    result = b.run_agent([], tty=False)
    assert result.returncode == 127
    assert isinstance(result.error, AgentNotFoundError)
    assert (result.error.command, result.error.user, result.error.machine) == (
        "claude", "node", "m")  # fmt: skip
    assert "install it with install_agent=True (npm install" in str(result.error)
    with pytest.raises(AgentNotFoundError):
        result.check()
    assert session_execs(fake_smolvm) == []


def test_the_check_runs_as_the_agent_user_with_the_sessions_env(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    """A `claude` on the session's PATH (`-e PATH=…`) that only root may run is not there for
    node; made runnable, it is found and the session runs it."""
    image_machine(fake_smolvm, "m")
    bin_dir = shared_dir / "bin"
    bin_dir.mkdir()
    agent = bin_dir / "claude"
    agent.write_text('#!/bin/sh\necho "agent as $(id -un): $*"\n')
    agent.chmod(0o700)  # root's alone
    path = f"PATH={bin_dir}:/usr/bin:/bin"
    proc = bottle("agent", "-n", "m", "--no-tty", "-e", path, "--", "hi")
    assert proc.returncode == CLI_FAILURE
    assert f"on its PATH={bin_dir}:/usr/bin:/bin" in proc.stderr
    agent.chmod(0o755)
    proc = bottle("agent", "-n", "m", "--no-tty", "-e", path, "--", "hi")
    assert (proc.returncode, proc.stdout) == (0, "agent as node: hi\n"), proc.stderr


# --- installing it -------------------------------------------------------------------------


def test_install_agent_then_the_session(fake_smolvm: Any, npm_image: str) -> None:
    proc = bottle("launch", "-n", "m1", "--image", npm_image, "--install-agent", "--no-tty",
                  "--", "--model", "sonnet")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "claude (stub) as node: --model sonnet\n"), (
        proc.stderr
    )
    assert fake_smolvm.machine("m1") is None


def test_agent_install_agent_in_an_existing_machine(fake_smolvm: Any, npm_image: str) -> None:
    image_machine(fake_smolvm, "m", image=npm_image)
    proc = bottle("agent", "-n", "m", "--no-tty", "--", "x")
    assert proc.returncode == CLI_FAILURE
    proc = bottle("agent", "-n", "m", "--install-agent", "--no-tty", "--", "x")
    assert (proc.returncode, proc.stdout) == (0, "claude (stub) as node: x\n"), proc.stderr


def test_install_agent_reports_its_step(fake_smolvm: Any, npm_image: str) -> None:
    steps: list[Progress] = []
    spec = LaunchSpec("m1", image=npm_image, agent_provider="codex", install_agent=True)
    with SmolmachinesBottleBackend().launch(spec, progress=steps.append) as b:
        assert b.exec("codex --version", user="node").stdout == "codex-cli 0.50.0\n"
    began = [p.step for p in steps if p.line is None and not p.done]
    assert began == ["creating", "starting", "provisioning", "installing", "stopping", "deleting"]


def test_install_agent_without_npm(fake_smolvm: Any, shared_dir: Path) -> None:
    # An image whose PATH has the guest's basic tools but no npm (this host has one in /usr/bin).
    tools = shared_dir / "tools"
    tools.mkdir()
    for tool in ("env", "id", "runuser"):
        found = next(d for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
                     if os.path.exists(f"{d}/{tool}"))  # fmt: skip
        (tools / tool).symlink_to(f"{found}/{tool}")
    fake_smolvm.add_image("bottle-test/no-npm:1", env=[f"PATH={tools}"])
    spec = LaunchSpec("m1", image="bottle-test/no-npm:1", install_agent=True)
    with pytest.raises(AgentInstallError, match="'npm' is not found on root's PATH"), (
        SmolmachinesBottleBackend().launch(spec)
    ):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") is None


@pytest.mark.usefixtures("exact")
def test_install_agent_needs_root(fake_smolvm: Any, npm_prefix: Path) -> None:
    """An image whose USER is node, on a smolvm with no `exec --user`: no way to root."""
    ref = add_npm_image(fake_smolvm, npm_prefix, ref="bottle-test/agent-npm:1", user="node")
    proc = bottle("launch", "-q", "-n", "m1", "--image", ref, "--install-agent", "--no-tty")
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr == (
        "bottle: error: --install-agent runs `npm install --global --no-fund --no-audit "
        "@anthropic-ai/claude-code` as root, and machine 'm1' runs guest commands as 'node' "
        "(its image's USER) with no way to root on smolvm 1.9.3: use an image that has "
        "'claude', or one without a USER\n"
    )
    assert fake_smolvm.machine("m1") is None


def test_install_agent_fails_as_npm_does(fake_smolvm: Any, npm_image: str) -> None:
    image_machine(fake_smolvm, "m", image=npm_image)
    b = SmolmachinesBottle("m")
    b.agent_provider = replace(b.agent_provider, install_command=("npm", "install", "-g", "nope"))
    with pytest.raises(AgentInstallError, match="failed with status 1: npm error 404 Not Found"):
        b.install_agent()


# --- with an allow-list ----------------------------------------------------------------------


@pytest.mark.usefixtures("exact")
def test_an_allow_list_must_name_the_registry(fake_smolvm: Any, npm_image: str) -> None:
    """smolvm fixes the allow-list at create: refused before anything runs, saying so."""
    proc = bottle("launch", "-n", "m1", "--image", npm_image, "--network", "agent",
                  "--install-agent", "--no-tty")  # fmt: skip
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr == (
        "bottle: error: --install-agent fetches @anthropic-ai/claude-code from "
        "registry.npmjs.org, which --network agent does not allow. smolvm fixes a machine's "
        "allow-list when it creates it, so that would stay reachable for the machine's whole "
        "life, not only for the install: accept that with --allow-host registry.npmjs.org, "
        "use --network open, or use an image that has 'claude'\n"
    )
    assert fake_smolvm.calls() == [] or "create" not in fake_smolvm.subcommands()
    with pytest.raises(InvalidInputError, match=r"allow_hosts=\['registry.npmjs.org'\]"), (
        SmolmachinesBottleBackend().launch(
            LaunchSpec("m1", image=npm_image, network="agent", install_agent=True))
    ):  # fmt: skip
        pytest.fail("body must not run")


@pytest.mark.parametrize("allowed", ["registry.npmjs.org", "npmjs.org"])
def test_an_allow_list_that_names_the_registry(
    fake_smolvm: Any, npm_image: str, allowed: str
) -> None:
    proc = bottle("launch", "-n", "m1", "--image", npm_image, "--network", "agent",
                  "--allow-host", allowed, "--install-agent", "--no-tty", "--", "x")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "claude (stub) as node: x\n"), proc.stderr
    create = next(c for c in fake_smolvm.calls() if c[1:2] == ["create"])
    assert create[create.index("--allow-host", create.index(allowed) - 1) + 1] == allowed


def test_no_network_no_install(fake_smolvm: Any, tmp_path: Path) -> None:
    archive = tmp_path / "agent.tar"
    archive.write_bytes(b"")
    spec = LaunchSpec("m1", image=str(archive), install_agent=True)
    with pytest.raises(InvalidInputError, match="the machine has no network"), (
        SmolmachinesBottleBackend().launch(spec)
    ):
        pytest.fail("body must not run")
    assert fake_smolvm.calls() == []


def test_install_agent_is_checked() -> None:
    with pytest.raises(InvalidInputError, match="install_agent must be True or False"):
        root_spec(install_agent="yes")
