"""The fake's options are smolvm's: every subcommand bottle uses lists exactly the options smolvm
has at the faked release, so a flag bottle relies on cannot exist only in the fake.

The reference list is fake_smolvm/smolvm-1.9.3-options.json, written down from smolvm's source
(src/main.rs, src/cli/machine.rs, src/cli/proxy_opts.rs at tag v1.9.3, and the same structs at
every tag from v1.0.2 for the release that added each option); the fake's own option tables are
written separately, in fake_smolvm/smolvm.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from harness.fakevm import FAKE_DIR, FakeSmolvm

REFERENCE = json.loads((FAKE_DIR / "smolvm-1.9.3-options.json").read_text())
SUBCOMMANDS = sorted(REFERENCE["commands"])
HELP = ("h", "help", None)
OPTION_LINE = re.compile(r"^  (?:-(\S), |    )--([a-z0-9-]+)(?: <([^>]+)>)?")


@pytest.fixture(autouse=True)
def _smolvm_1_9_3(fake_smolvm: FakeSmolvm) -> None:
    """These tests describe smolvm 1.9.3 whatever --fake-smolvm-version says; the ones about
    older releases pick theirs."""
    fake_smolvm.set_fault(VERSION=None)


def options_in_help(text: str) -> set[tuple[str | None, str, str | None]]:
    """(short, long, metavar) of every option in clap-style help output."""
    lines = text.splitlines()
    assert "Options:" in lines, text
    found = set()
    for line in lines[lines.index("Options:") + 1 :]:
        m = OPTION_LINE.match(line)
        if m:
            found.add((m[1], m[2], m[3]))
    return found


def reference(sub: str, version: tuple[int, ...]) -> set[tuple[str | None, str, str | None]]:
    opts: list[dict[str, Any]] = REFERENCE["commands"][sub]["options"]
    return {
        (o["short"], o["long"], o["value"])
        for o in opts
        if not o.get("hidden") and tuple(map(int, o.get("since", "1.0.2").split("."))) <= version
    } | {HELP}


def test_reference_covers_every_subcommand_bottle_uses() -> None:
    assert SUBCOMMANDS == ["cp", "create", "delete", "exec", "ls", "start", "status", "stop"]
    assert all(REFERENCE["commands"][s]["source"].startswith("src/cli/machine.rs")
               for s in SUBCOMMANDS)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_lists_smolvm_1_9_3_options_exactly(fake_smolvm: FakeSmolvm, sub: str) -> None:
    r = fake_smolvm.run("machine", sub, "--help")
    assert (r.returncode, r.stderr) == (0, "")
    assert options_in_help(r.stdout) == reference(sub, (1, 9, 3))


def test_top_level_help_and_version(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("--help")
    assert r.returncode == 0
    top = {(o["short"], o["long"], o["value"]) for o in REFERENCE["top"]["options"]}
    assert options_in_help(r.stdout) == top | {HELP}
    assert fake_smolvm.run("-V").stdout == fake_smolvm.run("--version").stdout == "smolvm 1.9.3\n"


@pytest.mark.parametrize("version", ["1.0.2", "1.6.0", "1.13.1", "1.14.0", "1.16.0"])
@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_release_lists_only_its_options(
    fake_smolvm: FakeSmolvm, sub: str, version: str
) -> None:
    fake_smolvm.set_fault(VERSION=version)
    r = fake_smolvm.run("machine", sub, "--help")
    assert r.returncode == 0
    shown = {(short, long) for short, long, _ in options_in_help(r.stdout)}
    release = tuple(map(int, version.split(".")))
    wanted = {(short, long) for short, long, _ in reference(sub, release)}
    assert shown == wanted


@pytest.mark.parametrize(("version", "args", "flag"), [
    ("1.8.3", ["cp", "--mode", "600", "a", "m:/b"], "--mode"),
    ("1.8.3", ["cp", "--uid", "1000", "a", "m:/b"], "--uid"),
    ("1.2.0", ["exec", "--name", "m", "-d", "--", "true"], "-d"),
    ("1.7.3", ["create", "--label", "a=b"], "--label"),
    ("1.6.0", ["delete", "-n", "m", "--cascade"], "--cascade"),
])
def test_option_from_a_later_release_is_a_usage_error(
    fake_smolvm: FakeSmolvm, version: str, args: list[str], flag: str
) -> None:
    fake_smolvm.create("m")
    fake_smolvm.set_fault(VERSION=version)
    r = fake_smolvm.run("machine", *args)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith(f"error: unexpected argument '{flag}' found\n")
    assert fake_smolvm.machine("m") is not None  # nothing ran


def test_exec_user_option_from_1_14_0(fake_smolvm: FakeSmolvm) -> None:
    # From release notes, not source (smolvm PR #1148): `--user`, long only.
    for version, shown in (("1.9.3", False), ("1.13.1", False), ("1.14.0", True),
                           ("1.16.0", True)):
        fake_smolvm.set_fault(VERSION=version)
        help_text = fake_smolvm.run("machine", "exec", "--help").stdout
        assert ((None, "user", "USER") in options_in_help(help_text)) is shown, version
        assert re.search(r"^\s*(-u, )?--user\b", help_text, re.M) is not None or not shown


@pytest.mark.parametrize("version", ["1.16.1", "2.0.0"])
def test_a_release_after_the_newest_known_is_a_setup_error(
    fake_smolvm: FakeSmolvm, version: str
) -> None:
    fake_smolvm.set_fault(VERSION=version)
    r = fake_smolvm.run("--version")
    assert (r.returncode, r.stdout) == (70, "")
    assert r.stderr == (f"fake smolvm: FAKE_SMOLVM_VERSION='{version}' is newer than the newest "
                        "release the fake knows (1.16.0)\n")
