"""Input is checked once, where it enters; the layers below take the checked value as it is.

The checked types (`MachineName`, `UserName`, `GuestPath`, `AllowedHost`, `AllowedCidr`) check
in their constructor, so a layer that takes one unchecked can trust it: none exists unchecked.
The counts below are of the rules being applied (the private check each constructor calls),
wherever that happens.
"""

from __future__ import annotations

import copy
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness.fakevm import FakeSmolvm

from bottle import _validate, network
from bottle import smolvm as sv
from bottle.backend import LaunchSpec, get_backend
from bottle.errors import InvalidInputError

# (module, the private function that applies the rules of one checked type)
RULES = [
    (_validate, "_check_machine_name"),
    (_validate, "_check_user_name"),
    (_validate, "_check_guest_path"),
    (network, "_check_host"),
    (network, "_check_cidr"),
]


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, object]]:
    """Every application of a checked type's rules: (rule, value) → how often."""
    counts: Counter[tuple[str, object]] = Counter()
    for module, name in RULES:
        real = getattr(module, name)

        def counting(value: object, *args: Any, real: Any = real, name: str = name) -> Any:
            counts[name, value] += 1
            return real(value, *args)

        monkeypatch.setattr(module, name, counting)
    return counts


def test_a_launch_checks_each_value_once(
    fake_smolvm: FakeSmolvm, checks: Counter[tuple[str, object]], tmp_path: Path
) -> None:
    fake_smolvm.add_host("example.com", "198.51.100.7")
    workdir = str(tmp_path / "work")  # the fake's guest is this host
    spec = LaunchSpec(
        "vm1", agent_user="root", workdir=workdir, network="allow",
        allow_hosts=["example.com"], allow_cidrs=["10.0.0.0/8"],
    )  # fmt: skip
    taken = Counter(checks)
    with get_backend("smolmachines").launch(spec):
        pass
    # The spec checked each once; create, start, status, the user probe, provisioning's mkdir
    # in the workdir, stop and delete all took the spec's values as they were.
    assert taken == {
        ("_check_machine_name", "vm1"): 1,
        ("_check_user_name", "root"): 1,
        ("_check_guest_path", workdir): 1,
        ("_check_host", "example.com"): 1,
        ("_check_cidr", "10.0.0.0/8"): 1,
    }
    assert checks == taken
    created = [c for c in fake_smolvm.calls() if c[1:2] == ["create"]]
    assert created and "example.com" in created[0] and "10.0.0.0/8" in created[0]
    assert fake_smolvm.subcommands()[-2:] == ["stop", "delete"]
    assert (tmp_path / "work").is_dir()  # provisioning ran, with the checked workdir


CHECKED = [
    (_validate.machine_name, _validate.MachineName, "vm-1", "-vm"),
    (_validate.user_name, _validate.UserName, "node", "-root"),
    (_validate.guest_path, _validate.GuestPath, "/home/node", "home/node"),
    (network.check_host, network.AllowedHost, "api.anthropic.com", "https://evil.example"),
    (network.check_cidr, network.AllowedCidr, "10.0.0.0/8", "10.0.0.0/33"),
]


@pytest.mark.parametrize(("check", "kind", "good", "bad"), CHECKED)
def test_a_checked_value_is_kept_in_its_checked_form(
    check: Any, kind: type[str], good: str, bad: str
) -> None:
    once = check(good)
    assert type(once) is kind and once == good
    assert check(once) is once  # handed back at once, not checked again
    assert kind(once) is once
    with pytest.raises(InvalidInputError):
        check(bad)


@pytest.mark.parametrize(("check", "kind", "good", "bad"), CHECKED)
def test_a_checked_type_cannot_be_made_unchecked(
    check: Any, kind: type[str], good: str, bad: str, checks: Counter[tuple[str, object]]
) -> None:
    # Issue 19: MachineName("-x") and AllowedHost("evil") were made by hand without a check,
    # and the layers below, which trust the type, passed them on.
    with pytest.raises(InvalidInputError):
        kind(bad)
    made = kind(good)
    assert type(made) is kind and made == good
    assert sum(checks.values()) == 2  # the rules ran for both
    # Copies and pickles are made through the constructor too.
    assert copy.copy(made) == made and type(copy.deepcopy(made)) is kind
    assert type(pickle.loads(pickle.dumps(made))) is kind
    assert sum(checks.values()) >= 3


def test_a_bad_name_made_by_hand_never_reaches_smolvm(fake_smolvm: FakeSmolvm) -> None:
    with pytest.raises(InvalidInputError, match="invalid machine name '--help'"):
        sv.start_args(_validate.MachineName("--help"))
    with pytest.raises(InvalidInputError, match="invalid allowed host"):
        sv.create_args("vm1", allow_hosts=[network.AllowedHost("evil.example:443")])
    assert fake_smolvm.calls() == []


def test_an_allowed_cidr_made_by_hand_is_normalised() -> None:
    assert network.AllowedCidr("1.1.1.1") == "1.1.1.1/32" == network.check_cidr("1.1.1.1")
    assert network.AllowedCidr("2001:db8::1") == "2001:db8::1/128"


def test_a_plain_string_is_still_checked() -> None:
    # Only the checked form passes unchecked: a str that merely looks like a name does not.
    with pytest.raises(InvalidInputError, match="machine name"):
        _validate.machine_name("-vm")
    with pytest.raises(InvalidInputError, match="absolute"):
        _validate.guest_path("home/node")
