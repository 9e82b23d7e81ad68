"""The fake's egress flags copy smolvm's: `--allow-cidr` checked by clap, `--allow-host` resolved
at create (a failure is smolvm's error, exit 1) and again at start (a failure only warns), the
flags imply `--net`, and a registry image's first boot may reach its registry since 1.3.5.

Sources (smol-machines/smolvm, tag v1.9.3 unless named): src/cli/machine.rs
`resolve_egress_flags` and `CreateCmd`; src/smolfile.rs `parse_cidr`, `resolve_host_to_cidrs`;
src/cli/vm_common.rs `start_vm_named_with_db`; src/agent/launcher.rs
`LaunchFeatures::allow_image_pull_egress` (v1.3.5, aa99522a); src/registry.rs
`registry_pull_hosts`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.fakevm import FakeSmolvm

USAGE_TAIL = (
    "\n\nUsage: smolvm machine create [OPTIONS] [-- <COMMAND>...]\n\n"
    "For more information, try '--help'.\n"
)


@pytest.fixture(autouse=True)
def _smolvm_1_9_3(fake_smolvm: FakeSmolvm) -> None:
    """These tests describe smolvm 1.9.3 whatever --fake-smolvm-version says; the ones about
    older releases pick theirs."""
    fake_smolvm.set_fault(VERSION=None)
    fake_smolvm.add_host("api.anthropic.com", "160.79.104.10", "2607:6bc0::10")
    fake_smolvm.add_host("nope.invalid")


def _create(fake: FakeSmolvm, *args: str) -> tuple[int, str, str]:
    r = fake.run("machine", "create", "-n", "m", *args)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-cidr", "10.0.0.0/8/8", "::1/129",
                                 "010.0.0.1", "10.0.0.0/+8", "fe80::1%eth0", ""])
def test_a_bad_cidr_is_a_clap_usage_error(fake_smolvm: FakeSmolvm, bad: str) -> None:
    code, out, err = _create(fake_smolvm, "--allow-cidr", bad)
    assert (code, out) == (2, "")
    assert err == (
        f"error: invalid value '{bad}' for '--allow-cidr <CIDR>': invalid CIDR '{bad}': "
        f"expected format like 10.0.0.0/8 or 1.1.1.1{USAGE_TAIL}"
    )
    assert fake_smolvm.machine("m") is None


def test_cidrs_are_stored_in_ipnets_form_and_imply_net(fake_smolvm: FakeSmolvm) -> None:
    code, _, err = _create(fake_smolvm, "--allow-cidr", "1.1.1.1", "--allow-cidr", "10.1.2.3/8",
                           "--allow-cidr", "2001:db8::1")
    assert code == 0, err
    rec = fake_smolvm.machine("m")
    assert rec is not None
    # ipnet keeps host bits; a bare address gets a full-length prefix.
    assert rec["allowed_cidrs"] == ["1.1.1.1/32", "10.1.2.3/8", "2001:db8::1/128"]
    assert (rec["network"], rec["dns_filter_hosts"]) == (True, None)


def test_hosts_are_resolved_at_create_and_kept_by_name(fake_smolvm: FakeSmolvm) -> None:
    code, _, err = _create(fake_smolvm, "--allow-cidr", "10.0.0.0/8", "--allow-host",
                           "api.anthropic.com", "--allow-host", "192.0.2.7",
                           "--outbound-localhost-only")
    assert code == 0, err
    rec = fake_smolvm.machine("m")
    assert rec is not None
    # Order of resolve_egress_flags: the CIDRs, each host's addresses, then loopback.
    assert rec["allowed_cidrs"] == ["10.0.0.0/8", "160.79.104.10/32", "2607:6bc0::10/128",
                                    "192.0.2.7/32", "127.0.0.0/8", "::1/128"]
    assert rec["dns_filter_hosts"] == ["api.anthropic.com", "192.0.2.7"]
    assert rec["network"] is True
    assert fake_smolvm.run("machine", "status", "-n", "m", "--json").returncode == 0


def test_an_unresolvable_host_fails_the_create(fake_smolvm: FakeSmolvm) -> None:
    code, out, err = _create(fake_smolvm, "--allow-host", "api.anthropic.com",
                             "--allow-host", "nope.invalid")
    assert (code, out) == (1, "")
    assert err == (
        "Error: config operation failed: --allow-host: failed to resolve 'nope.invalid': "
        "failed to lookup address information: Name or service not known\n"
    )
    assert fake_smolvm.machine("m") is None


def test_a_port_suffix_is_refused_before_resolving(fake_smolvm: FakeSmolvm) -> None:
    code, _, err = _create(fake_smolvm, "--allow-host", "api.anthropic.com:443")
    assert code == 1
    assert err == (
        "Error: config operation failed: --allow-host: invalid hostname 'api.anthropic.com:443': "
        "port suffixes are not supported. Use the hostname only (all ports are allowed to "
        "resolved IPs).\n"
    )


def test_names_outside_the_table_use_this_hosts_resolver(fake_smolvm: FakeSmolvm) -> None:
    # `localhost` resolves from /etc/hosts without any network, as it would for smolvm.
    code, _, err = _create(fake_smolvm, "--allow-host", "localhost")
    assert code == 0, err
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["allowed_cidrs"]
    assert set(rec["allowed_cidrs"]) <= {"127.0.0.1/32", "::1/128"}


def test_start_resolves_again_and_only_warns(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.add_host("flaky.example", "198.51.100.1")
    assert _create(fake_smolvm, "--allow-host", "flaky.example")[0] == 0
    fake_smolvm.add_host("flaky.example")  # the name stops resolving before start
    r = fake_smolvm.run("machine", "start", "-n", "m")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[:2] == [
        "Warning: could not resolve 'flaky.example' for egress policy: failed to resolve "
        "'flaky.example': failed to lookup address information: Name or service not known",
        "Starting machine 'm'...",
    ]
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "running"
    # The create-time address stays allowed; the name stays in the DNS allow-list.
    assert rec["egress"] == {"cidrs": ["198.51.100.1/32"], "hosts": ["flaky.example"]}


def _error_line(stderr: str) -> str:
    # crane's message ends with a newline of its own, so smolvm's Error line is followed by an
    # empty one.
    return [line for line in stderr.splitlines() if line.startswith("Error: ")][-1]


def _registry_machine(fake: FakeSmolvm, *flags: str, image: str = "node:22") -> tuple[int, str]:
    fake.add_image(image, user="node", workdir="/home/node")
    r = fake.run("machine", "create", "-n", "m", "-I", image, *flags)
    assert r.returncode == 0, r.stderr
    r = fake.run("machine", "start", "-n", "m")
    return r.returncode, r.stderr


def test_the_first_boot_may_reach_the_images_registry_since_1_3_5(fake_smolvm: FakeSmolvm) -> None:
    code, err = _registry_machine(fake_smolvm, "--allow-host", "api.anthropic.com")
    assert code == 0, err
    rec = fake_smolvm.machine("m")
    assert rec is not None
    # Enforced for this boot; the record keeps exactly what was asked for.
    assert rec["egress"]["hosts"] == ["api.anthropic.com", "docker.io", "docker.com"]
    assert rec["dns_filter_hosts"] == ["api.anthropic.com"]


def test_before_1_3_5_the_allow_list_blocks_the_images_own_pull(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.set_fault(VERSION="1.3.4")
    code, err = _registry_machine(fake_smolvm, "--allow-host", "api.anthropic.com")
    assert code == 1
    assert _error_line(err) == (
        "Error: agent operation failed: pull image: crane manifest failed: Error: fetching "
        'manifest node:22: Get "https://index.docker.io/v2/": dial tcp: lookup '
        "index.docker.io: no such host"
    )
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "created"
    # Naming the registry's hosts makes the pull work there too.
    fake_smolvm.add_host("docker.io", "198.51.100.5")
    fake_smolvm.add_host("docker.com", "198.51.100.6")
    fake_smolvm.run("machine", "delete", "-n", "m", "-f")
    code, err = _registry_machine(fake_smolvm, "--allow-host", "api.anthropic.com",
                                  "--allow-host", "docker.io", "--allow-host", "docker.com")
    assert code == 0, err


def test_a_registry_with_a_port_is_never_matched_by_smolvms_fold(fake_smolvm: FakeSmolvm) -> None:
    # registry_pull_hosts keeps "host:5000"; a DNS name never has a port.
    code, err = _registry_machine(fake_smolvm, "--allow-host", "api.anthropic.com",
                                  image="registry.example.com:5000/agent:1")
    assert code == 1
    assert "lookup registry.example.com: no such host" in _error_line(err)


def test_cidrs_only_do_not_fold_the_registry(fake_smolvm: FakeSmolvm) -> None:
    code, err = _registry_machine(fake_smolvm, "--allow-cidr", "10.0.0.0/8")
    assert code == 1
    assert _error_line(err).endswith("connect 0.0.0.0:443: connection refused")
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "created"


def test_a_local_image_pulls_nothing_under_any_policy(
    fake_smolvm: FakeSmolvm, tmp_path: Path
) -> None:
    archive = tmp_path / "agent.tar"
    archive.write_bytes(b"config from the table")
    fake_smolvm.add_image(str(archive), user="node")
    r = fake_smolvm.run("machine", "create", "-n", "m", "-I", str(archive),
                        "--allow-host", "api.anthropic.com")
    assert r.returncode == 0, r.stderr
    r = fake_smolvm.run("machine", "start", "-n", "m")
    assert r.returncode == 0, r.stderr
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["egress"]["hosts"] == ["api.anthropic.com"]


def test_an_open_machine_has_no_policy(fake_smolvm: FakeSmolvm) -> None:
    code, err = _registry_machine(fake_smolvm, "--net")
    assert code == 0, err
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["egress"] is None


@pytest.mark.parametrize("version", ["1.0.2", "1.6.0"])
def test_every_faked_release_has_the_flags_and_texts(fake_smolvm: FakeSmolvm, version: str) -> None:
    # --allow-cidr/--outbound-localhost-only are in v0.2.0, --allow-host since v0.5.0 (6ffaf836).
    fake_smolvm.set_fault(VERSION=version)
    code, _, err = _create(fake_smolvm, "--allow-host", "api.anthropic.com",
                           "--allow-cidr", "10.0.0.0/8", "--outbound-localhost-only")
    assert code == 0, err
    code, _, err = _create(fake_smolvm, "--allow-host", "nope.invalid")
    assert code == 1
    assert err.startswith("Error: config operation failed: --allow-host: failed to resolve ")


POLICY_ON_TSI = (
    "Error: config operation failed: egress: egress policy (--allow-cidr/--allow-host/"
    "--outbound-localhost-only) requires the virtio-net backend; TSI does not enforce it. Remove "
    "--net-backend tsi or set it to virtio-net\n"
)


@pytest.mark.parametrize("flags", [["--allow-cidr", "10.0.0.0/8"],
                                   ["--allow-host", "api.anthropic.com"],
                                   ["--outbound-localhost-only"]])
def test_a_policy_on_tsi_is_refused(fake_smolvm: FakeSmolvm, flags: list[str]) -> None:
    # src/network/launch.rs validate_requested_network_backend (f8f7d148, v1.1.3): only the
    # virtio-net gateway enforces a policy, so an explicit TSI beside one is refused at create.
    assert _create(fake_smolvm, "--net-backend", "tsi", *flags) == (1, "", POLICY_ON_TSI)
    assert fake_smolvm.machine("m") is None
    assert _create(fake_smolvm, "--net-backend", "virtio-net", *flags)[0] == 0
    fake_smolvm.set_fault(VERSION="1.1.2")  # before f8f7d148 the policy rode on TSI
    assert fake_smolvm.run("machine", "create", "-n", "old", "--net-backend", "tsi",
                           *flags).returncode == 0


def _floor(fake: FakeSmolvm, *flags: str) -> list[str] | None:
    fake.run("machine", "delete", "-n", "m", "-f")
    code, _, err = _create(fake, *flags)
    assert code == 0, err
    r = fake.run("machine", "start", "-n", "m")
    assert r.returncode == 0, r.stderr
    rec = fake.machine("m")
    assert rec is not None
    floor: list[str] | None = rec["egress_floor"]
    return floor


def test_the_gateway_floor_is_metadata_only_at_1_9_3(fake_smolvm: FakeSmolvm) -> None:
    # crates/smolvm-network/src/egress.rs FloorMode::MetadataOnly, the local default; a policy
    # forces virtio-net (src/network/launch.rs plan_launch_network), a plain --net stays on TSI,
    # whose filter is libkrun's (not known: None).
    metadata = ["169.254.0.0/16", "fe80::/10"]
    assert _floor(fake_smolvm, "--allow-cidr", "10.0.0.0/8") == metadata
    assert _floor(fake_smolvm, "--allow-cidr", "127.0.0.1") == metadata
    assert _floor(fake_smolvm, "--net", "-p", "8080:80") == metadata
    assert _floor(fake_smolvm, "--net") is None
    assert _floor(fake_smolvm) is None


def test_host_loopback_is_floored_from_1_13_0(fake_smolvm: FakeSmolvm) -> None:
    # From release notes, not source: smolvm PR #1060 (1.13.0) denies the host's loopback and
    # unspecified addresses unless an explicit static allow-list entry re-opens them.
    fake_smolvm.set_fault(VERSION="1.12.0")
    assert _floor(fake_smolvm, "--allow-cidr", "10.0.0.0/8") == ["169.254.0.0/16", "fe80::/10"]
    fake_smolvm.set_fault(VERSION="1.13.0")
    full = ["169.254.0.0/16", "fe80::/10", "127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"]
    assert _floor(fake_smolvm, "--allow-cidr", "10.0.0.0/8") == full
    assert _floor(fake_smolvm, "--net", "-p", "8080:80") == full
    reopened = _floor(fake_smolvm, "--allow-cidr", "127.0.0.0/8", "--allow-cidr", "::1")
    assert reopened == ["169.254.0.0/16", "fe80::/10", "0.0.0.0/32", "::/128"]
    one = _floor(fake_smolvm, "--allow-cidr", "127.0.0.1")
    assert one is not None and "127.0.0.0/8" not in one and "127.0.0.0/32" in one
    assert not any(c.startswith("127.0.0.1/") for c in one)
    assert _floor(fake_smolvm, "--net") is None  # TSI: libkrun's, not known
