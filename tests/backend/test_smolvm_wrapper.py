"""bottle.smolvm: argv builders (exact lists), executable lookup, version check, error mapping."""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bottle import smolvm as sv
from bottle.errors import (
    ConnectionLostError,
    InvalidInputError,
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    SmolvmError,
    SmolvmNotExecutableError,
    SmolvmNotFoundError,
    SmolvmTimeoutError,
    SmolvmTooOldError,
    SmolvmUsageError,
    SmolvmVersionError,
)

# --- argv builders ---------------------------------------------------------------------


def test_create_args_minimal_and_full() -> None:
    assert sv.create_args("m1") == ["machine", "create", "-n", "m1"]
    assert sv.create_args("m1", image="alpine:3", cpus=2, memory_mib=1024, network=True) == [
        "machine", "create", "-n", "m1", "-I", "alpine:3", "--cpus", "2", "--mem", "1024", "--net",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"cpus": 0}, "cpus"),
        ({"cpus": True}, "cpus"),
        # clap types of smolvm's create: --cpus u8, --mem u32 (src/cli/machine.rs, CreateCmd)
        ({"cpus": 256}, "cpus must be an integer from 1 to 255"),
        ({"memory_mib": -1}, "memory"),
        ({"memory_mib": 2**32}, "memory_mib must be an integer from 1 to 4294967295"),
        ({"image": "-x"}, "image"),
        ({"image": "a\0b"}, "NUL"),
    ],
)
def test_create_args_rejects_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        sv.create_args("m1", **kwargs)  # type: ignore[arg-type]


def test_create_args_largest_values_smolvm_takes() -> None:
    args = sv.create_args("m1", cpus=255, memory_mib=2**32 - 1)
    assert args[-4:] == ["--cpus", "255", "--mem", "4294967295"]


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("node:22", True),
        ("ghcr.io/org/agent@sha256:abc", True),
        ("mydir", True),  # no ./ prefix: smolvm reads a registry reference
        ("-", False),
        ("/srv/agent.tar", False),
        ("./agent", False),
        ("../agent.tgz", False),
        ("agent.tar.gz", False),
        ("local:0123", False),
        ("local-dir:/srv/x", False),
    ],
)
def test_is_registry_image_follows_smolvms_classify(image: str, registry: bool) -> None:
    assert sv.is_registry_image(image) is registry


def test_lifecycle_args_exact() -> None:
    assert sv.start_args("a") == ["machine", "start", "-n", "a"]
    assert sv.stop_args("a") == ["machine", "stop", "-n", "a"]
    assert sv.delete_args("a") == ["machine", "delete", "-n", "a", "-f"]
    assert sv.status_args("a") == ["machine", "status", "-n", "a", "--json"]
    assert sv.ls_args() == ["machine", "ls", "--json"]
    assert sv.cp_args("/h/f", "a", "/g/f") == ["machine", "cp", "/h/f", "a:/g/f"]
    assert sv.cp_args("/h/f", "a", "/g/f", uid=1000, gid=0) == [
        "machine", "cp", "--uid", "1000", "--gid", "0", "/h/f", "a:/g/f",
    ]  # fmt: skip
    with pytest.raises(InvalidInputError, match="--uid must be a non-negative integer"):
        sv.cp_args("/h/f", "a", "/g/f", uid=-1)


def test_exec_args_long_name_options_before_dashdash() -> None:
    assert sv.exec_args("a", ["true"]) == ["machine", "exec", "--name", "a", "--", "true"]
    assert sv.exec_args("a", ["-x", "--name", "b"], tty=True, env_names=["K", "L"]) == [
        "machine", "exec", "--name", "a", "-i", "-t", "-e", "K", "-e", "L",
        "--", "-x", "--name", "b",
    ]  # fmt: skip


def test_exec_args_interactive_workdir_and_user() -> None:
    assert sv.exec_args("a", ["x"], interactive=True, workdir="/w d") == [
        "machine", "exec", "--name", "a", "-i", "-w", "/w d", "--", "x",
    ]  # fmt: skip
    assert sv.exec_args("a", ["x"], tty=True, interactive=True, user="node") == [
        "machine", "exec", "--name", "a", "-i", "-t", "--user", "node", "--", "x",
    ]  # fmt: skip
    with pytest.raises(InvalidInputError, match="absolute"):
        sv.exec_args("a", ["x"], workdir="rel")


def test_exec_args_refuses_empty_command_nul_and_bad_env_name() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        sv.exec_args("a", [])
    with pytest.raises(InvalidInputError, match="NUL"):
        sv.exec_args("a", ["echo", "x\0y"])
    with pytest.raises(InvalidInputError, match="variable name"):
        sv.exec_args("a", ["true"], env_names=["A=B"])


def test_cp_args_refuses_colon_in_host_path_and_relative_guest_path() -> None:
    with pytest.raises(InvalidInputError, match="':'"):
        sv.cp_args("/h/a:b", "m", "/g")
    with pytest.raises(InvalidInputError, match="absolute"):
        sv.cp_args("/h/a", "m", "g/x")
    with pytest.raises(InvalidInputError, match=r"'\.\.'"):
        sv.cp_args("/h/a", "m", "/g/../etc/passwd")


@pytest.mark.parametrize(
    "name",
    ["", "-a", "_a", "a--b", "a-", "a b", "a/b", "a:b", "é", "a\0", "x" * 129],
)
def test_machine_names_outside_smolvm_rules_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match="machine name"):
        sv.start_args(name)


@pytest.mark.parametrize("name", ["a", "A9", "9a", "a-b_c", "a_", "x" * 128])
def test_machine_names_inside_smolvm_rules_are_accepted(name: str) -> None:
    assert sv.start_args(name)[-1] == name


# --- executable lookup -------------------------------------------------------------------


def _exe(path: Path, body: str = "#!/bin/sh\necho 'smolvm 1.9.2'\n", mode: int = 0o755) -> Path:
    path.write_text(body)
    path.chmod(mode)
    return path


def test_find_executable_prefers_override(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _exe(a / "smolvm")
    other = _exe(b / "my-smolvm")
    env = {"PATH": str(a), sv.ENV_OVERRIDE: str(other)}
    assert sv.find_executable(env) == str(other)
    assert sv.find_executable({"PATH": str(a)}) == str(a / "smolvm")


def test_missing_smolvm_names_path_and_override(tmp_path: Path) -> None:
    with pytest.raises(SmolvmNotFoundError) as info:
        sv.find_executable({"PATH": f"{tmp_path}:/nonexistent"})
    msg = str(info.value)
    assert f"{tmp_path}:/nonexistent" in msg
    assert "BOTTLE_SMOLVM" in msg
    # What subprocess would have raised, so a caller's `except FileNotFoundError` still works;
    # str() stays bottle's message.
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.ENOENT
    assert not msg.startswith("[Errno")


def test_override_to_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SmolvmNotFoundError, match="no such file"):
        sv.find_executable({sv.ENV_OVERRIDE: str(tmp_path / "nope")})


def test_override_not_executable(tmp_path: Path) -> None:
    f = _exe(tmp_path / "smolvm", mode=0o644)
    with pytest.raises(SmolvmNotExecutableError, match="not an executable"):
        sv.find_executable({sv.ENV_OVERRIDE: str(f)})
    with pytest.raises(SmolvmNotExecutableError, match="not an executable"):
        sv.find_executable({sv.ENV_OVERRIDE: str(tmp_path)})


def test_non_executable_smolvm_on_path_is_named(tmp_path: Path) -> None:
    _exe(tmp_path / "smolvm", mode=0o644)
    with pytest.raises(SmolvmNotExecutableError, match="not executable") as info:
        sv.find_executable({"PATH": str(tmp_path)})
    assert isinstance(info.value, PermissionError)
    assert not isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.EACCES


# --- version -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("smolvm 1.9.2\n", (1, 9, 2)),
        ("smolvm 1.0.2-3-gabcdef\n", (1, 0, 2)),
        ("smolvm v10.20.30", (10, 20, 30)),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int]) -> None:
    assert sv.parse_version(text) == version


def test_parse_version_garbage() -> None:
    with pytest.raises(SmolvmVersionError, match=r"smolvm X\.Y\.Z"):
        sv.parse_version("hello")


def test_version_is_read_once(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = f"#!/bin/sh\necho x >> {counter}\necho 'smolvm 1.2.3'\n"
    exe = _exe(tmp_path / "smolvm", script)
    assert sv.read_version(str(exe)) == (1, 2, 3)
    assert sv.read_version(str(exe)) == (1, 2, 3)
    s = sv.Smolvm(str(exe))
    assert s.version == (1, 2, 3)
    assert counter.read_text().count("x") == 1


@pytest.mark.parametrize("old", ["0.9.9", "1.0.1", "0.2.0"])
def test_too_old_smolvm_is_refused_naming_the_minimum(tmp_path: Path, old: str) -> None:
    exe = _exe(tmp_path / "smolvm", f"#!/bin/sh\necho 'smolvm {old}'\n")
    with pytest.raises(SmolvmTooOldError) as info:
        sv.Smolvm(str(exe)).path  # noqa: B018
    assert "1.0.2" in str(info.value)
    assert old in str(info.value)
    assert info.value.minimum == (1, 0, 2)


@pytest.mark.parametrize(
    ("version", "warned"), [("1.8.0", True), ("1.0.2", True), ("1.8.1", False)]
)
def test_warn_once_below_1_8_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: str, warned: bool
) -> None:
    exe = _exe(tmp_path / "smolvm", f"#!/bin/sh\necho 'smolvm {version}'\n")
    caplog.set_level(logging.WARNING, logger="bottle.smolvm")
    for _ in range(3):
        assert sv.Smolvm(str(exe)).version_text == version
    warnings = [r.getMessage() for r in caplog.records if "older than 1.8.1" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "large paste" in warnings[0]


def test_minimum_version_is_accepted(tmp_path: Path) -> None:
    exe = _exe(tmp_path / "smolvm", "#!/bin/sh\necho 'smolvm 1.0.2'\n")
    assert sv.Smolvm(str(exe)).path == str(exe)


def test_failing_version_command(tmp_path: Path) -> None:
    exe = _exe(tmp_path / "smolvm", "#!/bin/sh\necho broken >&2\nexit 3\n")
    with pytest.raises(SmolvmVersionError, match="broken"):
        sv.read_version(str(exe))


# --- failure classification --------------------------------------------------------------

ARGV = ["/x/smolvm", "machine", "exec", "--name", "m", "--", "true"]


@pytest.mark.parametrize(
    ("stderr", "cls"),
    [
        ("Error: vm not found: m\n", MachineNotFoundError),
        (
            "Error: config operation failed: machine status: machine 'm' not found\n",
            MachineNotFoundError,
        ),
        (
            "Error: agent operation failed: connect: machine 'm' is not running. "
            "Use 'smolvm machine start --name m' first.\n",
            MachineNotRunningError,
        ),
        (
            "Error: agent operation failed: vm exec interactive: connection to VM lost\n",
            ConnectionLostError,
        ),
        (
            "Error: config operation failed: create machine: machine 'm' already exists or "
            "is being created\n",
            MachineExistsError,
        ),
        ("Error: agent operation failed: vm exec: failed to spawn command: x\n", SmolvmError),
    ],
)
def test_exit_1_with_smolvm_error_line(stderr: str, cls: type[SmolvmError]) -> None:
    err = sv.classify_failure(ARGV, 1, stderr, machine="m", guest=True)
    assert type(err) is cls
    assert err is not None
    assert err.returncode == 1
    assert stderr.strip()[len("Error: ") :] in str(err)


# Every Display prefix of smolvm's Error enum, src/data/errors.rs at v1.9.3.
ERRORS_RS = [
    "vm creation failed: boom",
    "hypervisor not available: no kvm",
    "invalid vm state: expected running, got stopped",
    "rootfs operation failed: x",
    "rootfs not found: /r",
    "storage operation failed: resize: full",
    "disk not found: /d",
    "mount operation failed: bind: x",
    "invalid mount path: relative",
    "mount source not found: /src",
    "config operation failed: cp: bad",
    "database operation failed: open: locked",
    "database not available: x",
    "command 'crun' failed: exit 1",
    "agent operation failed: vm exec: failed to spawn command: x",
    "kvm not available: x",
    "kvm permission denied: /dev/kvm",
    "io operation failed: Broken pipe (os error 32)",
]


@pytest.mark.parametrize("message", ERRORS_RS)
def test_every_smolvm_error_prefix_is_smolvms_failure(message: str) -> None:
    err = sv.classify_failure(ARGV, 1, f"guest output\nError: {message}\n", guest=True)
    assert type(err) is SmolvmError, message
    assert message in str(err)


def test_vm_dying_mid_captured_exec_is_connection_lost() -> None:
    # The client's read of the reply fails (`read_exact_retry`): Error::Io's Display, smolvm's
    # src/data/errors.rs (tests/fake_smolvm/README.md, "The VM dying mid-exec").
    err = sv.classify_failure(ARGV, 1, "Error: io operation failed: connection closed\n",
                              machine="m", guest=True)  # fmt: skip
    assert type(err) is ConnectionLostError


def test_guest_usage_error_stays_the_guests() -> None:
    # A clap-based guest tool (uv, ruff, rg) exits 2 with its own usage text.
    stderr = "error: unexpected argument '--frob' found\n\nUsage: uv pip install [OPTIONS]\n"
    assert sv.classify_failure(ARGV, 2, stderr, guest=True) is None
    stderr = "error: unexpected argument '-n' found\n\nUsage: smolvm machine exec [OPTIONS]\n"
    assert isinstance(sv.classify_failure(ARGV, 2, stderr, guest=True), SmolvmUsageError)


def test_guest_exit_1_is_not_smolvm_error() -> None:
    assert sv.classify_failure(ARGV, 1, "", guest=True) is None
    # A guest program's own "Error:" line is not smolvm's shape.
    assert sv.classify_failure(ARGV, 1, "Error: file missing\n", guest=True) is None
    # A guest exit 2 without clap's usage text is the guest's status.
    assert sv.classify_failure(ARGV, 2, "grep: bad\n", guest=True) is None


def test_usage_error_exit_2() -> None:
    stderr = "error: unexpected argument '-n' found\n\nUsage: smolvm machine exec [OPTIONS]\n"
    err = sv.classify_failure(ARGV, 2, stderr, guest=True)
    assert isinstance(err, SmolvmUsageError)
    assert "unexpected argument" in str(err)
    # Outside exec, exit 2 is always a usage error.
    assert isinstance(sv.classify_failure(["s", "machine", "start"], 2, ""), SmolvmUsageError)


def test_lifecycle_failure_without_error_line() -> None:
    err = sv.classify_failure(["s", "machine", "stop", "-n", "m"], 1, "boom\n", machine="m")
    assert type(err) is SmolvmError
    assert "boom" in str(err)
    assert "machine stop" in str(err)


def test_success_is_not_classified() -> None:
    assert sv.classify_failure(ARGV, 0, "Error: vm not found: m") is None



# --- the runner: timeouts and progress lines ------------------------------------------------


def test_run_captured_reports_stderr_lines_as_they_come(tmp_path: Path) -> None:
    # smolvm redraws its pull progress with "\r" (src/cli/mod.rs): each redraw is a line.
    script = (
        "printf 'Pulling image a... [==  ]\\rPulling image a... [====]\\r"
        "Pulling image a... done.\\n' >&2; echo out; printf tail >&2; exit 3"
    )
    lines: list[str] = []
    ran = sv.run_captured(["sh", "-c", script], on_line=lines.append, timeout=30)
    assert ran is not None
    status, out, err = ran
    assert (status, out) == (3, "out\n")
    assert err.endswith("done.\ntail")
    assert lines == [
        "Pulling image a... [==  ]", "Pulling image a... [====]", "Pulling image a... done.",
        "tail",
    ]  # fmt: skip
    # Each says whether smolvm redraws it in place (a bare "\r" ends it) or leaves it.
    assert [getattr(line, "redrawn", None) for line in lines] == [True, True, False, False]


def test_a_line_ended_by_cr_lf_is_a_line_even_split_across_reads() -> None:
    # "\r" at the end of one read may be the first half of "\r\n": not a redraw.
    script = "printf 'one\\r' >&2; sleep 0.3; printf '\\ntwo\\r' >&2; sleep 0.3; printf x >&2"
    lines: list[str] = []
    ran = sv.run_captured(["sh", "-c", script], on_line=lines.append, timeout=30)
    assert ran is not None and ran[0] == 0
    assert [(str(x), getattr(x, "redrawn", None)) for x in lines] == [
        ("one", False), ("two", True), ("x", False)]  # fmt: skip


def test_run_captured_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # A child that keeps the pipes open after the parent is gone must not stall the read.
    script = f"sleep 300 & echo $! > {pidfile}; echo started >&2; wait"
    began = time.monotonic()
    assert sv.run_captured(["sh", "-c", script], timeout=1.5) is None
    assert time.monotonic() - began < 60  # a hang guard, not a timing assertion
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_lifecycle_timeout_is_an_error_naming_the_step(tmp_path: Path) -> None:
    exe = _exe(tmp_path / "smolvm", "#!/bin/sh\n[ \"$1\" = --version ] && "
               "{ echo 'smolvm 1.9.3'; exit 0; }\nexec sleep 300\n")  # fmt: skip
    s = sv.Smolvm(str(exe), timeouts=sv.Timeouts(stop=0.5, delete=0.5))
    with pytest.raises(SmolvmTimeoutError, match=r"smolvm machine stop for machine 'm' did not "
                       r"finish within 0\.5 s"):  # fmt: skip
        s.stop("m")
    with pytest.raises(SmolvmTimeoutError, match="machine delete"):
        s.delete("m")


def test_default_timeouts_are_long_enough_for_a_pull_and_bound_teardown() -> None:
    t = sv.DEFAULT_TIMEOUTS
    assert t.create is not None and t.create >= 600
    assert t.start is not None and t.start >= 600
    assert t.stop is not None and t.delete is not None and t.status is not None
    assert max(t.stop, t.delete, t.status) <= 120


@pytest.mark.parametrize("value", ["900", True, 0, -1.5, math.nan, [60]])
def test_timeouts_refuse_what_is_not_a_time_limit(value: object) -> None:
    # Issue 19: Timeouts(create="900") used to start smolvm, fail on the arithmetic and leave
    # it running (and its pipes open); now it is refused before anything runs.
    with pytest.raises(InvalidInputError, match=r"^Timeouts create must be "):
        sv.Timeouts(create=value)  # type: ignore[arg-type]


def test_a_timeout_that_is_not_a_time_limit_starts_nothing(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    with pytest.raises(InvalidInputError, match="timeout must be a number of seconds"):
        sv.run_captured(["sh", "-c", f"touch {ran}"], timeout="900")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"timeouts must be a bottle\.smolvm\.Timeouts"):
        sv.Smolvm(timeouts={"create": 900})  # type: ignore[arg-type]
    assert not ran.exists()


def test_an_infinite_timeout_is_no_limit(tmp_path: Path) -> None:
    # It used to be an OverflowError traceback (from the select), with smolvm killed.
    assert sv.run_captured(["sh", "-c", "echo out; echo err >&2"], timeout=math.inf) == (
        0, "out\n", "err\n",
    )  # fmt: skip
    assert sv.run_captured(["true"], timeout=10**400) == (0, "", "")
    exe = _exe(tmp_path / "smolvm", "#!/bin/sh\necho 'smolvm 1.9.3'\n")
    s = sv.Smolvm(str(exe), timeouts=sv.Timeouts(stop=math.inf))
    s.stop("m")


# --- the guest wrapper's lines (Marks) and run_streamed around them ----------------------

NONCE = "0123456789abcdef"
RUN = f"bottle-exec {NONCE} run\n".encode()
REFUSED = f"bottle-exec {NONCE} refused: uid=0(root) gid=0(root)\n".encode()


def filtered(stream: bytes, cut: int) -> tuple[bytes, sv.Marks]:
    """`stream` through a Marks in pieces of `cut` bytes (every split a pipe could make)."""
    marks = sv.Marks(NONCE)
    out = b"".join(marks.filter(stream[i : i + cut]) for i in range(0, len(stream), cut))
    return out + marks.end(), marks


@pytest.mark.parametrize("cut", [1, 2, 7, 100])
def test_marks_take_out_the_wrappers_lines_and_only_those(cut: int) -> None:
    out, marks = filtered(RUN + b"bottle-exec " + RUN + b"err\n", cut)
    assert (out, marks.started, marks.refusal) == (b"bottle-exec " + RUN + b"err\n", True, None)
    out, marks = filtered(REFUSED, cut)
    assert (out, marks.started, marks.refusal) == (b"", False, "uid=0(root) gid=0(root)")
    # smolvm's own lines before the wrapper's pass; so does a line of the wrapper's shape with
    # another nonce, or a word it never says; a line cut short at the end is given back.
    other = b"WARN smolvm: slow\nbottle-exec 0000000000000000 run\n"
    unknown = f"bottle-exec {NONCE} what\n".encode()
    out, marks = filtered(other + unknown + RUN + b"bottle-ex", cut)
    assert (out, marks.started) == (other + unknown + b"bottle-ex", True)
    out, marks = filtered(b"bottle-exe", cut)
    assert (out, marks.started, marks.settled.is_set()) == (b"bottle-exe", False, True)
    overlong = f"bottle-exec {NONCE} ".encode() + b"x" * (64 * 1024 + 1) + b"\n"
    out, marks = filtered(overlong + RUN, cut if cut > 2 else 4096)
    assert (out, marks.started) == (overlong, True)


def wrapper(line: bytes, then: str) -> list[str]:
    return ["sh", "-c", f'printf "%s" "$1" >&2; {then}', "sh", line.decode()]


@pytest.mark.parametrize(("line", "then", "taken"), [
    (REFUSED, "exit 125", b""),  # refused: nothing read
    (b"", "exit 137", b""),  # killed before the wrapper spoke: nothing read
    (RUN, "exec cat", b"typed\n"),  # handed over: the command reads it all
])  # fmt: skip
@pytest.mark.parametrize("kind", ["pipe", "file"])  # epoll takes no regular file
def test_stdin_goes_to_a_wrapped_command_only_once_it_started(
    capfdbinary: Any, tmp_path: Path, line: bytes, then: str, taken: bytes, kind: str
) -> None:
    saved = os.dup(0)
    try:
        if kind == "pipe":
            r, w = os.pipe()
            os.write(w, b"typed\n")
            os.close(w)
        else:
            (tmp_path / "in").write_bytes(b"typed\n")
            r = os.open(tmp_path / "in", os.O_RDONLY)
        os.dup2(r, 0)
        os.close(r)
        marks = sv.Marks(NONCE)
        status, said = sv.run_streamed(wrapper(line, then), marks=marks)
        left = os.read(0, 100)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    out, err = capfdbinary.readouterr()
    assert (out, err, said) == (taken, b"", "")
    assert left == (b"" if taken else b"typed\n")  # what the command did not take is still ours
    assert marks.started == bool(taken)
    assert status == {"exit 125": 125, "exit 137": 137, "exec cat": 0}[then]
