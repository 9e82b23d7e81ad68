"""A machine's network (`LaunchSpec.network`, `bottle launch --network`): open, off, the agent
provider's hosts, or the user's allow-list, on smolvm's create command line; names and CIDRs
checked by bottle before any smolvm call; a registry image's pull under an allow-list.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, CLI_FAILURE

from bottle import network as net
from bottle import smolvm as sv
from bottle.agent_provider import PROVIDERS
from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import RetryPolicy, SmolmachinesBottleBackend
from bottle.errors import InvalidInputError, SmolvmError
from bottle.network import NetworkMode, NetworkPolicy

BOTTLE = [sys.executable, "-m", "bottle"]
CLAUDE = ["--allow-host", "api.anthropic.com", "--allow-host", "platform.claude.com"]
CODEX = ["--allow-host", "api.openai.com", "--allow-host", "auth.openai.com",
         "--allow-host", "chatgpt.com"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("test_images")



@pytest.fixture(autouse=True)
def _hosts(request: pytest.FixtureRequest) -> None:
    """Every name these tests allow resolves from the fake's table (no real DNS)."""
    if "fake_smolvm" not in request.fixturenames:
        return
    fake = request.getfixturevalue("fake_smolvm")
    fake.set_fault(VERSION=None)  # 1.9.3 unless a test picks another release
    for i, name in enumerate(
        ["api.anthropic.com", "platform.claude.com", "api.openai.com", "auth.openai.com",
         "chatgpt.com", "github.com", "docker.io", "docker.com", "registry.example.com"]
    ):  # fmt: skip
        fake.add_host(name, f"198.51.100.{i + 1}")
    fake.add_host("nope.invalid")


def _backend() -> SmolmachinesBottleBackend:
    return SmolmachinesBottleBackend(smolvm=sv.Smolvm(), retry=RetryPolicy(attempts=2, delay=0.01))


def _create_call(fake: Any) -> list[str]:
    return [c for c in fake.calls() if c[1:2] == ["create"]][-1]


def _flags(create: list[str]) -> list[str]:
    """The network flags of a create call (everything after the image and resources)."""
    out = []
    for i, word in enumerate(create):
        if word == "--net":
            out.append(word)
        elif word in ("--allow-host", "--allow-cidr"):
            out += [word, create[i + 1]]
    return out


# --- checked before anything runs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        ("", "empty"),
        ("https://api.anthropic.com", "not a URL"),
        ("api.anthropic.com/v1", "not a URL"),
        ("api.anthropic.com:443", "port suffixes are not supported"),
        ("*.anthropic.com", "'anthropic.com' covers them"),
        ("bad_host-.com", "labels"),
        ("a..b", "labels"),
        ("white space.com", "labels"),
        ("1.2.3.999", "looks like an IP address"),
        ("fe80::1%eth0", "zone"),
        ("x" * 64 + ".com", "labels"),
    ],
)
def test_bad_hosts_are_refused_by_bottle(host: str, needle: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid allowed host") as info:
        LaunchSpec("m1", network="agent", allow_hosts=[host])
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "host", ["api.anthropic.com", "API.Anthropic.com.", "localhost", "192.0.2.1", "2001:db8::1",
             "_srv.example.com"],
)  # fmt: skip
def test_good_hosts_pass_unchanged(host: str) -> None:
    assert net.check_host(host) == host


@pytest.mark.parametrize(
    ("cidr", "normal"),
    [("10.0.0.0/8", "10.0.0.0/8"), ("1.1.1.1", "1.1.1.1/32"), ("10.1.2.3/8", "10.1.2.3/8"),
     ("2001:DB8::/32", "2001:db8::/32"), ("::1", "::1/128"), ("0.0.0.0/0", "0.0.0.0/0")],
)  # fmt: skip
def test_cidrs_take_smolvms_normal_form(cidr: str, normal: str) -> None:
    assert net.check_cidr(cidr) == normal


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0/33", "10.0.0.0/255.0.0.0", "not-a-cidr", "", "010.0.0.1", "::1/129",
             "10.0.0.0/8/8", "10.0.0.0/+8", "api.anthropic.com"],
)  # fmt: skip
def test_bad_cidrs_are_refused_by_bottle(cidr: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid allowed CIDR"):
        LaunchSpec("m1", network="allow", allow_cidrs=[cidr])


def test_old_boolean_network_keeps_working() -> None:
    assert LaunchSpec("m1", network=True).network is True
    assert LaunchSpec("m1", network=False).network is False
    assert LaunchSpec("m1").network is None
    spec = LaunchSpec("m1", network="agent", allow_hosts=["github.com"], allow_cidrs=["10.0.0.0/8"])
    assert spec.network is NetworkMode.AGENT and spec.network == "agent"
    assert (spec.allow_hosts, spec.allow_cidrs) == (("github.com",), ("10.0.0.0/8",))


def test_a_list_is_the_allow_list_itself() -> None:
    spec = LaunchSpec("m1", network=["github.com", "10.0.0.0/8", "192.0.2.7", "2001:db8::/32"],
                      allow_hosts=["pypi.org"])  # fmt: skip
    assert spec.network is NetworkMode.ALLOW
    assert spec.allow_hosts == ("pypi.org", "github.com")
    # Addresses go to the CIDRs: as --allow-host they would turn on smolvm's DNS name filter.
    assert spec.allow_cidrs == ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32")
    with pytest.raises(InvalidInputError, match="not a URL"):
        LaunchSpec("m1", network=["https://github.com"])
    with pytest.raises(InvalidInputError, match="invalid allowed CIDR"):
        LaunchSpec("m1", network=["10.0.0.0/33"])
    with pytest.raises(InvalidInputError, match="needs allow_hosts or allow_cidrs"):
        LaunchSpec("m1", network=[])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"network": "closed"}, "unknown network 'closed'"),
        ({"network": 1}, "unknown network 1"),
        ({"allow_hosts": ["github.com"]}, "need network='agent'"),
        ({"network": True, "allow_cidrs": ["10.0.0.0/8"]}, "need network='agent'"),
        ({"network": "open", "allow_hosts": ["github.com"]}, "need network='agent'"),
        ({"network": "allow"}, "needs allow_hosts or allow_cidrs"),
        ({"network": "agent", "allow_hosts": "github.com"}, "list of host names, not a string"),
        ({"network": "agent", "allow_cidrs": "10.0.0.0/8"}, "list of CIDRs, not a string"),
    ],
)
def test_contradictions_are_refused_by_the_spec(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        LaunchSpec("m1", **kwargs)
    assert needle in str(info.value)


def test_create_args_puts_each_entry_on_its_own_flag() -> None:
    args = sv.create_args("m1", image="x.tar", allow_hosts=["a.example", "b.example"],
                          allow_cidrs=["10.0.0.0/8", "1.1.1.1"])  # fmt: skip
    assert args == ["machine", "create", "-n", "m1", "-I", "x.tar",
                    "--allow-host", "a.example", "--allow-host", "b.example",
                    "--allow-cidr", "10.0.0.0/8", "--allow-cidr", "1.1.1.1/32"]  # fmt: skip
    with pytest.raises(InvalidInputError, match="port suffixes"):
        sv.create_args("m1", allow_hosts=["a.example:80"])


@pytest.mark.parametrize(
    ("image", "hosts"),
    [
        ("node:22", ("docker.io", "docker.com")),
        ("library/node:22", ("docker.io", "docker.com")),
        ("docker.io/library/node", ("docker.io", "docker.com")),
        ("registry-1.docker.io/x/y", ("docker.io", "docker.com")),
        ("ghcr.io/acme/agent:1", ("ghcr.io",)),
        ("registry.example.com:5000/agent:1", ("registry.example.com",)),
        ("localhost:5000/agent", ("localhost",)),
        ("registry.smolmachines.com/lib/alpine", ("smolmachines.com",)),
        ("bottle-test/agent:1", ("docker.io", "docker.com")),
    ],
)
def test_registry_pull_hosts_follow_smolvm(image: str, hosts: tuple[str, ...]) -> None:
    assert net.registry_pull_hosts(image) == hosts


def test_every_provider_names_its_api_hosts() -> None:
    assert PROVIDERS["claude"].egress_hosts == ("api.anthropic.com", "platform.claude.com")
    assert PROVIDERS["codex"].egress_hosts == ("api.openai.com", "auth.openai.com", "chatgpt.com")
    for provider in PROVIDERS.values():
        assert net.check_hosts(provider.egress_hosts) == provider.egress_hosts


# --- what reaches smolvm's create command line ----------------------------------------------


def test_the_providers_default_list_reaches_create(fake_smolvm: Any) -> None:
    spec = LaunchSpec("m1", image=AGENT_IMAGE, network="agent")
    with _backend().launch(spec) as bottle:
        rec = fake_smolvm.machine("m1")
        # smolvm 1.9.3 lets the first boot reach the image's registry itself.
        assert rec["egress"]["hosts"] == ["api.anthropic.com", "platform.claude.com",
                                          "docker.io", "docker.com"]  # fmt: skip
        assert bottle.exec("id -un").stdout == "node\n"
    assert _flags(_create_call(fake_smolvm)) == CLAUDE
    assert fake_smolvm.machine("m1") is None


def test_codex_gets_its_own_hosts(fake_smolvm: Any, tmp_path: Path) -> None:
    archive = tmp_path / "agent.tar"
    archive.write_bytes(b"config from the table")
    fake_smolvm.add_image(str(archive), user="node", workdir="/home/node")
    spec = LaunchSpec("m1", image=str(archive), network="agent", agent_provider="codex")
    with _backend().launch(spec):
        pass
    assert _flags(_create_call(fake_smolvm)) == CODEX


def test_user_additions_are_merged_after_the_providers(fake_smolvm: Any) -> None:
    spec = LaunchSpec("m1", image=AGENT_IMAGE, network="agent",
                      allow_hosts=["github.com", "API.anthropic.com"],
                      allow_cidrs=["10.0.0.0/8", "192.0.2.7"])  # fmt: skip
    with _backend().launch(spec):
        rec = fake_smolvm.machine("m1")
        assert rec["dns_filter_hosts"] == ["api.anthropic.com", "platform.claude.com",
                                           "github.com"]  # fmt: skip
    assert _flags(_create_call(fake_smolvm)) == [
        *CLAUDE, "--allow-host", "github.com",
        "--allow-cidr", "10.0.0.0/8", "--allow-cidr", "192.0.2.7/32",
    ]  # fmt: skip


def test_allow_is_the_users_list_only(fake_smolvm: Any) -> None:
    spec = LaunchSpec("m1", image=AGENT_IMAGE, network=NetworkMode.ALLOW,
                      allow_hosts=["github.com"])  # fmt: skip
    with _backend().launch(spec):
        pass
    assert _flags(_create_call(fake_smolvm)) == ["--allow-host", "github.com"]
    with _backend().launch(LaunchSpec("m2", image=AGENT_IMAGE, network=["github.com", "1.1.1.1"])):
        pass
    assert _flags(_create_call(fake_smolvm)) == [
        "--allow-host", "github.com", "--allow-cidr", "1.1.1.1/32",
    ]  # fmt: skip


@pytest.mark.parametrize(("network", "flags"), [("open", ["--net"]), (True, ["--net"]),
                                                 ("off", []), (False, []), (None, [])])
def test_open_and_off(fake_smolvm: Any, tmp_path: Path, network: Any, flags: list[str]) -> None:
    archive = tmp_path / "agent.tar"
    archive.write_bytes(b"config from the table")
    fake_smolvm.add_image(str(archive), user="node")
    with _backend().launch(LaunchSpec("m1", image=str(archive), network=network)):
        rec = fake_smolvm.machine("m1")
        assert rec["egress"] is None and rec["network"] is bool(flags)
    assert _flags(_create_call(fake_smolvm)) == flags


def test_off_with_a_registry_image_names_the_ways_out(fake_smolvm: Any) -> None:
    with pytest.raises(InvalidInputError) as info, _backend().launch(
        LaunchSpec("m1", image=AGENT_IMAGE, network="off")
    ):
        pytest.fail("body must not run")
    message = str(info.value)
    assert "network='open', or network='agent'" in message
    assert f"docker save {AGENT_IMAGE} -o image.tar" in message
    assert fake_smolvm.calls() == []


# --- a registry image under an allow-list ----------------------------------------------------


def test_before_smolvm_1_3_5_bottle_adds_the_registry_itself(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(VERSION="1.3.4")  # no allow_image_pull_egress yet
    with _backend().launch(LaunchSpec("m1", image=AGENT_IMAGE, network="agent")) as bottle:
        assert bottle.exec("id -un").stdout == "node\n"  # the pull went through
    assert _flags(_create_call(fake_smolvm)) == [
        *CLAUDE, "--allow-host", "docker.io", "--allow-host", "docker.com",
    ]  # fmt: skip


def test_a_registry_with_a_port_is_added_without_it(fake_smolvm: Any) -> None:
    image = "registry.example.com:5000/agent:1"
    fake_smolvm.add_image(image, user="node", workdir="/home/node")
    with _backend().launch(LaunchSpec("m1", image=image, network="agent")):
        pass
    assert _flags(_create_call(fake_smolvm)) == [*CLAUDE, "--allow-host", "registry.example.com"]


def test_the_policy_says_what_smolvm_adds_for_the_pull(fake_smolvm: Any) -> None:
    policy = _backend().network_policy(LaunchSpec("m1", image=AGENT_IMAGE, network="agent"))
    assert policy == NetworkPolicy(
        NetworkMode.AGENT, ("api.anthropic.com", "platform.claude.com"), (),
        ("docker.io", "docker.com"),
    )  # fmt: skip
    assert "for the image pull, docker.io, docker.com" in policy.describe()


def test_cidrs_only_with_a_registry_image_is_refused_before_create(fake_smolvm: Any) -> None:
    spec = LaunchSpec("m1", image=AGENT_IMAGE, network="allow", allow_cidrs=["10.0.0.0/8"])
    with pytest.raises(InvalidInputError) as info, _backend().launch(spec):
        pytest.fail("body must not run")
    message = str(info.value)
    assert "allow_hosts=['docker.io', 'docker.com']" in message
    assert f"docker save {AGENT_IMAGE} -o image.tar" in message
    assert "create" not in fake_smolvm.subcommands()


def test_an_unresolvable_host_is_smolvms_error_and_leaves_nothing(fake_smolvm: Any) -> None:
    spec = LaunchSpec("m1", image=AGENT_IMAGE, network="agent", allow_hosts=["nope.invalid"])
    with pytest.raises(SmolvmError) as info, _backend().launch(spec):
        pytest.fail("body must not run")
    assert str(info.value) == (
        "smolvm machine create failed (machine 'm1'): config operation failed: --allow-host: "
        "failed to resolve 'nope.invalid': failed to lookup address information: Name or "
        "service not known"
    )
    assert fake_smolvm.machine("m1") is None
    assert "start" not in fake_smolvm.subcommands()


# --- the command line ------------------------------------------------------------------------


def _bottle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOTTLE, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_cli_network_agent_with_additions(fake_smolvm: Any) -> None:
    proc = _bottle(
        "launch", "-n", "m1", "--image", AGENT_IMAGE, "--network", "agent",
        "--allow-host", "github.com", "--allow-cidr", "10.0.0.0/8", "--no-tty",
        "--agent-command", "/bin/sh", "--", "-c", "exit 3",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert _flags(_create_call(fake_smolvm)) == [
        *CLAUDE, "--allow-host", "github.com", "--allow-cidr", "10.0.0.0/8",
    ]  # fmt: skip
    assert fake_smolvm.machine("m1") is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--allow-host", "github.com"], "need --network agent"),
        (["--network", "open", "--allow-cidr", "10.0.0.0/8"], "need --network agent"),
        (["--net", "--network", "agent"], "--net and --network agent both choose"),
        (["--network", "agent", "--allow-host", "https://github.com"], "not a URL"),
        (["--network", "agent", "--allow-cidr", "10.0.0.0/33"], "invalid allowed CIDR"),
        (["--network", "allow"], "needs --allow-host or --allow-cidr"),
    ],
)
def test_cli_bad_network_is_one_line_before_smolvm(
    fake_smolvm: Any, args: list[str], needle: str
) -> None:
    proc = _bottle("launch", "-n", "m1", "--image", AGENT_IMAGE, "--no-tty", *args)
    assert proc.returncode == CLI_FAILURE
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("bottle: error: ") and needle in proc.stderr, proc.stderr
    assert fake_smolvm.calls() == []


def test_cli_unknown_network_is_a_usage_error(fake_smolvm: Any) -> None:
    proc = _bottle("launch", "-n", "m1", "--network", "closed")
    assert proc.returncode == CLI_FAILURE
    assert "invalid choice: 'closed'" in proc.stderr
    assert fake_smolvm.calls() == []
