"""Input is checked once, where it enters; the layers below take the checked value as it is."""

from __future__ import annotations

import pytest
from harness.fakevm import FakeSmolvm

from bottle import _validate, network
from bottle.backend import LaunchSpec, get_backend
from bottle.errors import InvalidInputError


def test_a_launch_checks_the_machine_name_once(
    fake_smolvm: FakeSmolvm, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real = _validate.machine_name

    def counting(name: str) -> _validate.MachineName:
        if type(name) is not _validate.MachineName:
            checked.append(name)
        return real(name)

    monkeypatch.setattr(_validate, "machine_name", counting)
    spec = LaunchSpec("vm1", agent_user="root")
    with get_backend("smolmachines").launch(spec) as bottle:
        assert bottle.exec("true", user="root").returncode == 0
    # Create, start, status, the user probe, exec, stop and delete all took the spec's value.
    assert checked == ["vm1"]
    assert fake_smolvm.calls(), "smolvm was not run at all"


@pytest.mark.parametrize(
    ("check", "value", "kind"),
    [
        (_validate.machine_name, "vm-1", _validate.MachineName),
        (_validate.user_name, "node", _validate.UserName),
        (_validate.guest_path, "/home/node", _validate.GuestPath),
        (network.check_host, "api.anthropic.com", network.AllowedHost),
        (network.check_cidr, "10.0.0.0/8", network.AllowedCidr),
    ],
)
def test_a_checked_value_is_kept_in_its_checked_form(
    check: object, value: str, kind: type[str]
) -> None:
    assert callable(check)
    once = check(value)
    assert type(once) is kind and once == value
    assert check(once) is once  # handed back at once, not checked again


def test_a_plain_string_is_still_checked() -> None:
    # Only the checked form passes unchecked: a str that merely looks like a name does not.
    with pytest.raises(InvalidInputError, match="machine name"):
        _validate.machine_name("-vm")
    with pytest.raises(InvalidInputError, match="absolute"):
        _validate.guest_path("home/node")
