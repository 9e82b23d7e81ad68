"""The fake copies smolvm 1.9.3 where it is inconvenient: image machines, who guest commands run
as, registry images without network, secrets, bounds, and the releases where these changed.

Each test names the smolvm source it rests on (tag v1.9.3 unless another is named).
"""

from __future__ import annotations

import grp
import hashlib
import json
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness.fakevm import FAKE_SMOLVM, FakeSmolvm

NODE_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/node/bin",
    "NODE_VERSION=22.11.0",
]
REFUSED = (
    "Error: config operation failed: create machine: image '{img}' must be pulled from a "
    "registry, but this machine has no network, so the pull can never succeed. Add --net (or "
    "publish a port with -p, or set an egress policy with --allow-cidr/--allow-host). To keep "
    "the machine network-isolated, supply the image locally instead: `docker save {img} | "
    "smolvm machine create --image - ...`\n"
)


@pytest.fixture(autouse=True)
def _smolvm_1_9_3(fake_smolvm: FakeSmolvm) -> None:
    """These tests describe smolvm 1.9.3 whatever --fake-smolvm-version says; the ones about
    older releases pick theirs."""
    fake_smolvm.set_fault(VERSION=None)


def node_image(fake: FakeSmolvm, ref: str = "node:22", workdir: str | None = "/home/node") -> None:
    fake.add_image(ref, user="node", workdir=workdir, env=NODE_ENV)


def run_exec(fake: FakeSmolvm, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return fake.run("machine", "exec", "--name", "m", *args, **kw)


def run_raw(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the fake keeping \r (text mode would turn it into \n)."""
    r = subprocess.run([str(FAKE_SMOLVM), *args], stdin=subprocess.DEVNULL, capture_output=True,
                       check=False, timeout=60)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(),
                                       r.stderr.decode())


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- image table, create


def test_registry_image_without_network_is_refused_at_create(fake_smolvm: FakeSmolvm) -> None:
    # src/config.rs validate_image_fetchable (v1.7.3, 57e77e5e); src/main.rs exits 1.
    node_image(fake_smolvm)
    r = fake_smolvm.run("machine", "create", "-n", "m", "--image", "node:22")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", REFUSED.format(img="node:22"))
    assert fake_smolvm.machine("m") is None
    # Any network counts: --net, a published port, an egress policy (which implies --net).
    for i, extra in enumerate((["--net"], ["-p", "8080:80"], ["--allow-cidr", "10.0.0.0/8"],
                               ["--outbound-localhost-only"])):
        r = fake_smolvm.run("machine", "create", "-n", f"m{i}", "-I", "node:22", *extra)
        assert r.returncode == 0, r.stderr


def test_registry_check_arrived_in_1_7_3(fake_smolvm: FakeSmolvm) -> None:
    node_image(fake_smolvm)
    fake_smolvm.set_fault(VERSION="1.7.2")
    assert fake_smolvm.run("machine", "create", "-n", "m", "-I", "node:22").returncode == 0
    # Before 1.7.3 the same machine is created, and every start fails in the guest's pull.
    r = fake_smolvm.run("machine", "start", "-n", "m")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-2].startswith(
        "Error: agent operation failed: pull image: crane manifest failed: Error: fetching "
        "manifest node:22: ")
    assert "network is unreachable" in r.stderr
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "created"
    fake_smolvm.set_fault(VERSION="1.7.3")
    r = fake_smolvm.run("machine", "create", "-n", "m2", "-I", "node:22")
    assert (r.returncode, r.stderr) == (1, REFUSED.format(img="node:22"))


def test_start_pulls_with_smolvm_progress_lines(fake_smolvm: FakeSmolvm) -> None:
    # src/cli/vm_common.rs start_vm_named_with_db ("Pulling IMG...") around src/cli/mod.rs
    # pull_with_progress (a \r-redrawn bar, "— syncing...", "done.").
    node_image(fake_smolvm)
    assert fake_smolvm.run("machine", "create", "-n", "m", "-I", "node:22", "--net").returncode == 0
    r = run_raw("machine", "start", "-n", "m")
    assert r.returncode == 0, r.stderr
    bar = "[==========>         ] 50%"
    assert r.stderr == (
        "Starting machine 'm'...\nPulling node:22...\nPulling image node:22..."
        f"\rPulling image node:22... {bar}\rPulling image node:22... [{'=' * 20}] 100%"
        f"\rPulling image node:22... [{'=' * 20}] 100% — syncing..."
        f"\rPulling image node:22... done.{' ' * 30}\n"
    )
    rec = fake_smolvm.machine("m")
    assert rec is not None
    assert r.stdout == f"Machine 'm' running (PID: {rec['pid']})\n"
    # Later starts skip the pull (init_completed).
    fake_smolvm.run("machine", "stop", "-n", "m")
    assert fake_smolvm.run("machine", "start", "-n", "m").stderr == "Starting machine 'm'...\n"


def test_unknown_registry_ref_fails_like_a_failed_pull(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "create", "-n", "m", "-I", "nosuch/image:1", "--net")
    assert r.returncode == 0  # create never contacts the registry
    r = run_raw("machine", "start", "-n", "m")
    assert (r.returncode, r.stdout) == (1, "")
    lines = r.stderr.split("\n")
    assert lines[:2] == ["Starting machine 'm'...", "Pulling nosuch/image:1..."]
    pulling = "Pulling image nosuch/image:1..."
    assert lines[2] == f"{pulling}\r{pulling} done.{' ' * 30}"
    assert lines[3].startswith(
        "Error: agent operation failed: pull image: crane manifest failed: Error: fetching "
        "manifest nosuch/image:1: ")
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "created"


def test_local_images_need_no_network(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    # src/data/image_source.rs classify/resolve: `-`, an explicit path or an archive suffix is
    # local; the record keeps local:<sha256> or local-dir:<path>.
    archive = tmp_path / "app.tar"
    archive.write_bytes(b"not really a tar")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    cases = {"a": str(archive), "b": "./app.tar", "c": "./rootfs", "d": "-"}
    for name, image in cases.items():
        r = fake_smolvm.run("machine", "create", "-n", name, "--image", image, stdin=None,
                            input="streamed archive", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    docs = {d["name"]: d["image"] for d in json.loads(fake_smolvm.run("machine", "ls",
                                                                       "--json").stdout)}
    digest = hashlib.sha256(b"not really a tar").hexdigest()
    assert docs == {
        "a": f"local:{digest}", "b": f"local:{digest}", "c": f"local-dir:{rootfs}",
        "d": f"local:{hashlib.sha256(b'streamed archive').hexdigest()}",
    }
    # Starting a local image pulls nothing.
    assert fake_smolvm.run("machine", "start", "-n", "a").stderr == "Starting machine 'a'...\n"
    # A bare name is a registry reference even when such a file sits in the cwd.
    (tmp_path / "alpine").write_text("x")
    r = fake_smolvm.run("machine", "create", "-n", "e", "--image", "alpine", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, REFUSED.format(img="alpine"))


def test_missing_local_archive_is_a_config_error(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    r = fake_smolvm.run("machine", "create", "-n", "m", "--image", f"{tmp_path}/gone.tar")
    assert (r.returncode, r.stderr) == (1, (
        f"Error: config operation failed: --image: cannot read archive {tmp_path}/gone.tar: "
        "No such file or directory (os error 2)\n"))
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM node:22\n")
    r = fake_smolvm.run("machine", "create", "-n", "m", "--image", str(dockerfile))
    assert r.returncode == 1 and "looks like a Dockerfile, not an image" in r.stderr


def test_bad_image_table_is_a_setup_error(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    table = tmp_path / "images.json"
    table.write_text(json.dumps({"node:22": {"user": 1000}}))
    fake_smolvm.set_fault(IMAGES=str(table))
    fake_smolvm.run("machine", "create", "-n", "m", "-I", "node:22", "--net")
    r = fake_smolvm.run("machine", "start", "-n", "m")
    assert r.returncode == 70 and "entry 'node:22' must be" in r.stderr


# --------------------------------------------------------------------------- who the guest is


def test_image_machine_runs_as_image_user(fake_smolvm: FakeSmolvm, shared_dir: Path) -> None:
    # crates/smolvm-agent/src/oci.rs resolve_process_identity: uid, primary gid and the groups
    # that list the user in /etc/group; HOME from its passwd entry (libcrun set_home_env).
    node = pwd.getpwnam("node")
    groups = sorted({g.gr_gid for g in grp.getgrall() if "node" in g.gr_mem} - {node.pw_gid})
    node_image(fake_smolvm)
    fake_smolvm.create("m", image="node:22")
    script = "id -u; id -g; id -G; echo $HOME; pwd; echo $PATH; echo ${TERM-unset}; touch x"
    r = run_exec(fake_smolvm, "-w", str(shared_dir), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    uid, gid, all_groups, home, cwd, path, term = r.stdout.splitlines()
    assert (int(uid), int(gid)) == (node.pw_uid, node.pw_gid)
    assert sorted(int(g) for g in all_groups.split()) == sorted({node.pw_gid, *groups})
    assert (home, cwd, path, term) == (node.pw_dir, str(shared_dir), NODE_ENV[0][5:], "unset")
    assert (shared_dir / "x").stat().st_uid == node.pw_uid  # really that user on this host


def test_tty_of_an_image_user_is_theirs(fake_smolvm: FakeSmolvm, require_node_user: Any) -> None:
    # crun hands the console to the container user: the guest can reopen its own tty.
    node_image(fake_smolvm)
    fake_smolvm.create("m", image="node:22")
    r = run_raw("machine", "exec", "--name", "m", "-t", "--", "sh", "-c",
                "stat -c %U $(tty); echo hi > /dev/tty")
    assert r.stdout == "node\r\nhi\r\n"


@pytest.mark.parametrize(("version", "term"), [("1.9.3", "xterm-256color"), ("1.7.5", "unset")])
def test_image_tty_term(fake_smolvm: FakeSmolvm, version: str, term: str) -> None:
    # with_term_default (v1.7.6) adds TERM to a -t exec's env unless that env (the image's ENV
    # included) has one; crun exec passes nothing else.
    fake_smolvm.add_image("plain")
    fake_smolvm.add_image("screen", env=["TERM=screen"])
    fake_smolvm.create("m", image="plain")
    fake_smolvm.create("s", image="screen")
    fake_smolvm.set_fault(VERSION=version)
    show = ["-t", "--", "sh", "-c", "echo ${TERM-unset}"]
    assert run_raw("machine", "exec", "--name", "m", *show).stdout == f"{term}\r\n"
    assert run_raw("machine", "exec", "--name", "s", *show).stdout == "screen\r\n"
    assert run_raw("machine", "exec", "--name", "m", "-e", "TERM=dumb", *show).stdout == (
        "dumb\r\n")


def test_runuser_fails_for_a_non_root_guest(fake_smolvm: FakeSmolvm) -> None:
    node_image(fake_smolvm)
    fake_smolvm.create("m", image="node:22")
    for args in (["--"], ["-i", "--"], ["--stream", "--"]):
        r = run_exec(fake_smolvm, *args, "runuser", "-u", "node", "--", "id")
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr == "runuser: may not be used by non-root users\n"
    r = run_exec(fake_smolvm, "--", "chown", "root", "/proc/self/cwd")
    assert r.returncode == 1


def test_image_workdir_and_env_precedence(fake_smolvm: FakeSmolvm, require_node_user: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # src/cli/vm_common.rs resolve_image_runtime_defaults: image ENV < record env + secrets < -e;
    # -w, else the machine's workdir, else the image's WorkingDir; crun.rs adds PATH if missing.
    fake_smolvm.add_image("node:22", user="node", workdir="/tmp", env=["A=image", "B=image",
                                                                        "C=image"])
    fake_smolvm.create("m", image="node:22", env=["B=record", "C=record"])
    monkeypatch.setenv("HOSTVAL", "from-host")
    r = run_exec(fake_smolvm, "-e", "C=cli", "-e", "HOSTVAL", "--", "sh", "-c",
                 'echo "$A $B $C $HOSTVAL"; pwd; echo $PATH')
    assert r.stdout == ("image record cli from-host\n/tmp\n"
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")
    fake_smolvm.create("w", image="node:22", workdir="/")
    r = fake_smolvm.run("machine", "exec", "--name", "w", "--", "pwd")
    assert r.stdout == "/\n"
    fake_smolvm.add_image("bare-config", env=["HOME=/srv"])
    fake_smolvm.create("h", image="bare-config")
    r = fake_smolvm.run("machine", "exec", "--name", "h", "--", "sh", "-c", "id -u; echo $HOME")
    assert r.stdout == "0\n/srv\n"  # no USER: root; an image HOME wins over the passwd one


def test_bare_machine_env_and_cwd(fake_smolvm: FakeSmolvm) -> None:
    # A bare VM exec is spawned by the agent (root, cwd /) with the agent's environment
    # (src/agent/launcher.rs: HOME, PATH, TERM), then the record's env, then -e.
    fake_smolvm.create("m")
    r = run_exec(fake_smolvm, "--", "sh", "-c", "id -u; pwd; echo $HOME; echo $PATH; echo $TERM")
    assert r.stdout == ("0\n/\n/root\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:"
                        "/bin\nxterm-256color\n")


@pytest.mark.parametrize(("version", "captured", "interactive"), [
    ("1.0.2", "root", "root"),
    ("1.2.5", "root", "root"),
    ("1.3.0", "root", "node"),
    ("1.5.9", "root", "node"),
    ("1.6.0", "node", "node"),
    ("1.9.3", "node", "node"),
])
def test_exec_user_follows_the_release(
    fake_smolvm: FakeSmolvm, require_node_user: Any, version: str, captured: str,
    interactive: str
) -> None:
    # Interactive (-i/-t, and --stream, which the agent runs interactively) since v1.3.0
    # (5bbffccf, ResolvedLaunch); captured since v1.6.0 (957bd755, crun exec --user).
    node_image(fake_smolvm)
    fake_smolvm.create("m", image="node:22")
    fake_smolvm.set_fault(VERSION=version)
    who = "id -un; echo $HOME"
    home = {"root": "/root", "node": pwd.getpwnam("node").pw_dir}
    assert run_exec(fake_smolvm, "--", "sh", "-c", who).stdout == (
        f"{captured}\n{home[captured]}\n")
    for mode in ("-i", "--stream"):
        assert run_exec(fake_smolvm, mode, "--", "sh", "-c", who).stdout == (
            f"{interactive}\n{home[interactive]}\n")
    r = run_raw("machine", "exec", "--name", "m", "-t", "--", "id", "-un")
    assert r.stdout == f"{interactive}\r\n"  # through the guest pty


def test_unknown_image_user_is_the_agents_error(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.add_image("odd", user="nosuchuser")
    fake_smolvm.create("m", image="odd")
    r = run_exec(fake_smolvm, "--", "true")
    assert (r.returncode, r.stderr) == (
        1, "Error: agent operation failed: run command: user 'nosuchuser' not found in "
           "container rootfs\n")
    r = run_exec(fake_smolvm, "-i", "--", "true")
    assert r.stderr.startswith("Error: agent operation failed: run interactive: user ")


def test_user_option_from_1_14_0(fake_smolvm: FakeSmolvm, require_node_user: Any) -> None:
    # From release notes, not source: smolvm PR #1148's `--user` (1.14.0); long form only.
    node_image(fake_smolvm)
    fake_smolvm.create("m", image="node:22")
    fake_smolvm.create("bare")
    fake_smolvm.set_fault(VERSION="1.13.1")
    r = run_exec(fake_smolvm, "--user", "root", "--", "id", "-un")
    assert r.returncode == 2 and r.stderr.startswith("error: unexpected argument '--user' found")
    fake_smolvm.set_fault(VERSION="1.14.0")
    assert run_exec(fake_smolvm, "--", "id", "-un").stdout == "node\n"  # the image's USER
    assert run_exec(fake_smolvm, "--user", "root", "--", "id", "-un").stdout == "root\n"
    assert run_exec(fake_smolvm, "--user", "node", "-i", "--", "id", "-un").stdout == "node\n"
    assert run_exec(fake_smolvm, "-u", "root", "--", "true").returncode == 2  # no short form
    r = fake_smolvm.run("machine", "exec", "--name", "bare", "--user", "node", "--", "true")
    assert (r.returncode, r.stderr) == (
        1, "Error: agent operation failed: vm exec: user 'node' not found in container rootfs\n")
    assert fake_smolvm.run("machine", "exec", "--name", "bare", "--user", "root", "--",
                           "id", "-un").stdout == "root\n"


# --------------------------------------------------------------------------- secrets


def test_secret_env_and_file_resolved_on_the_host_per_exec(
    fake_smolvm: FakeSmolvm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # src/cli/machine.rs parse_cli_secret_refs; src/secrets.rs resolve_refs_to_env (file
    # contents lose trailing newlines); -e still wins over a secret.
    fake_smolvm.create("m")
    monkeypatch.setenv("HOST_TOKEN", "t0ken")
    secret = tmp_path / "key"
    secret.write_text("s3cret\n\n")
    r = run_exec(fake_smolvm, "--secret-env", "TOKEN=HOST_TOKEN", "--secret-file",
                 f"KEY={secret}", "--secret-env", "OVER=HOST_TOKEN", "-e", "OVER=cli", "--",
                 "sh", "-c", 'echo "$TOKEN|$KEY|$OVER"')
    assert (r.returncode, r.stdout) == (0, "t0ken|s3cret|cli\n"), r.stderr
    # For that exec only: never in the record, never in the call log.
    r = run_exec(fake_smolvm, "--", "sh", "-c", 'echo "${TOKEN-unset}"')
    assert r.stdout == "unset\n"
    assert "t0ken" not in json.dumps(fake_smolvm.machine("m"))
    assert "t0ken" not in (fake_smolvm.state_dir / "calls.jsonl").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--secret-env", "TOKEN"], "--secret-env: expected KEY=VALUE, got 'TOKEN'"),
    (["--secret-env", "=HOST_TOKEN"], "--secret-env: empty secret name in '=HOST_TOKEN'"),
    (["--secret-file", "K=rel/path"],
     "--secret-file: secret 'K': from_file path 'rel/path' is relative; absolute paths are "
     "required"),
    (["--secret-env", "K=HOST_TOKEN", "--secret-file", "K=/etc/hostname"],
     "--secret-file: secret 'K' specified more than once"),
    (["--secret-env", "K=NOT_SET_ANYWHERE"], "resolve secret 'K': env_unset"),
    (["--secret-file", "K=/no/such/file"], "resolve secret 'K': file_read_failed"),
])
def test_secret_errors(fake_smolvm: FakeSmolvm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                       args: list[str], message: str) -> None:
    fake_smolvm.create("m")
    monkeypatch.setenv("HOST_TOKEN", "x")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    marker = tmp_path / "ran"
    r = run_exec(fake_smolvm, *args, "--", "touch", str(marker))
    assert (r.returncode, r.stderr) == (1, f"Error: config operation failed: {message}\n")
    assert not marker.exists()


def test_secret_file_symlink_and_size_refused(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    fake_smolvm.create("m")
    target = tmp_path / "real"
    target.write_text("v")
    (tmp_path / "link").symlink_to(target)
    r = run_exec(fake_smolvm, "--secret-file", f"K={tmp_path}/link", "--", "true")
    assert r.stderr == "Error: config operation failed: resolve secret 'K': file_read_failed\n"
    (tmp_path / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    r = run_exec(fake_smolvm, "--secret-file", f"K={tmp_path}/big", "--", "true")
    assert r.stderr == "Error: config operation failed: resolve secret 'K': file_too_large\n"


def test_machine_not_running_is_reported_before_secret_errors(fake_smolvm: FakeSmolvm) -> None:
    # ExecCmd::run connects first, then parses the secret flags.
    fake_smolvm.create("m", running=False)
    r = run_exec(fake_smolvm, "--secret-env", "BROKEN", "--", "true")
    assert r.stderr == ("Error: agent operation failed: connect: machine 'm' is not running. "
                        "Use 'smolvm machine start --name m' first.\n")


def test_create_secret_refs_resolved_at_each_exec(
    fake_smolvm: FakeSmolvm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATING", "one")
    assert fake_smolvm.run("machine", "create", "-n", "m", "--secret-env",
                           "TOKEN=ROTATING").returncode == 0
    fake_smolvm.run("machine", "start", "-n", "m")
    assert run_exec(fake_smolvm, "--", "sh", "-c", "echo $TOKEN").stdout == "one\n"
    monkeypatch.setenv("ROTATING", "two")
    assert run_exec(fake_smolvm, "--", "sh", "-c", "echo $TOKEN").stdout == "two\n"
    assert "one" not in json.dumps(fake_smolvm.machine("m"))


# --------------------------------------------------------------------------- bounds, cp


@pytest.mark.parametrize(("args", "message"), [
    (["--cpus", "0"], "validate resources: CPU count must be at least 1"),
    (["--mem", "63"], "validate resources: memory must be at least 64 MiB (got 63 MiB)"),
    (["--storage", "0"], "validate resources: storage disk size must be greater than 0 GiB"),
    (["--label", "novalue"], "--label: expected KEY=VALUE, got 'novalue'"),
    (["--label", "=v"], "--label: label key cannot be empty (in '=v')"),
])
def test_resource_and_label_errors_are_smolvm_errors(
    fake_smolvm: FakeSmolvm, args: list[str], message: str
) -> None:
    r = fake_smolvm.run("machine", "create", "-n", "m", *args)
    assert (r.returncode, r.stderr) == (1, f"Error: config operation failed: {message}\n")
    assert fake_smolvm.machine("m") is None


def test_bounds_edges_are_accepted(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "create", "-n", "m", "--cpus", "255", "--mem", "4294967295")
    assert r.returncode == 0
    # src/data/resources.rs: more than 16 vCPUs only warns.
    assert r.stderr == ("warning: requested 255 vCPUs but the hypervisor supports at most 16; "
                        "the VM will run with 16 vCPUs\n")
    rec = fake_smolvm.machine("m")
    assert rec is not None and (rec["cpus"], rec["memory_mib"]) == (255, 4294967295)


def test_cp_owner_and_mode_flags(fake_smolvm: FakeSmolvm, tmp_path: Path,
                                 require_node_user: Any) -> None:
    # install_file_atomic: rename, then mode (best effort), then owner (an error); a uid alone
    # keeps the group.
    fake_smolvm.create("m")
    node = pwd.getpwnam("node")
    src = tmp_path / "src"
    src.write_text("data")
    dest = tmp_path / "dest"
    r = fake_smolvm.run("machine", "cp", "--uid", str(node.pw_uid), "--mode", "0o640", str(src),
                        f"m:{dest}")
    assert r.returncode == 0, r.stderr
    st = dest.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (node.pw_uid, 0, 0o640)
    assert r.stderr.startswith(f"Uploading {src} -> {dest}: 4 B / 4 B (100.0%, ")
    r = fake_smolvm.run("machine", "cp", "--mode", "800", str(src), f"m:{dest}")
    assert (r.returncode, r.stderr) == (1, "Error: config operation failed: cp: invalid octal "
                                           "mode '800' (expected e.g. 644)\n")


def test_cp_flags_did_not_exist_before_1_9_0(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    fake_smolvm.create("m")
    fake_smolvm.set_fault(VERSION="1.8.3")
    src = tmp_path / "src"
    src.write_text("data")
    r = fake_smolvm.run("machine", "cp", "--uid", "1000", str(src), f"m:{tmp_path}/dest")
    assert r.returncode == 2 and r.stderr.startswith("error: unexpected argument '--uid' found")
    assert not (tmp_path / "dest").exists()
    assert fake_smolvm.run("machine", "cp", str(src), f"m:{tmp_path}/dest").returncode == 0
    assert (tmp_path / "dest").stat().st_uid == 0


# --------------------------------------------------------------------------- streams, faults


def test_stream_is_live_and_separate(fake_smolvm: FakeSmolvm) -> None:
    # src/cli/machine.rs ExecEventPrinter: stdout and stderr as they come.
    fake_smolvm.create("m")
    p = subprocess.Popen(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "--stream", "--", "sh", "-c",
         "echo one; echo err >&2; read x"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None and p.stdin is not None
    assert p.stdout.readline() == b"one\n"  # while the guest still runs
    assert p.stderr.readline() == b"err\n"
    p.stdin.write(b"never reaches the guest\n")
    p.stdin.close()
    time.sleep(0.5)
    assert p.poll() is None  # the guest's stdin is never fed nor closed
    p.kill()
    p.wait()


@pytest.mark.parametrize("version", ["1.14.1", "1.16.0"])
@pytest.mark.parametrize("args", [[], ["-i"], ["--stream"]])
def test_vm_killed_is_reported_as_such_from_1_14_1(
    fake_smolvm: FakeSmolvm, version: str, args: list[str]
) -> None:
    # From release notes, not source: smolvm PR #1154 says a VM killed by a signal "now says
    # so"; its text is not known, so the fake's is made up (and unlike every 1.9.3 text).
    fake_smolvm.add_image("img")
    fake_smolvm.create("m", image="img")
    fake_smolvm.set_fault(VERSION=version, DIE_AFTER=0.5)
    r = run_exec(fake_smolvm, *args, "--", "sleep", "60")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "Error: the VM of machine 'm' ended: killed by signal 9 (SIGKILL)\n"
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "stopped"


def test_vm_killed_before_1_14_1_is_a_closed_connection(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.add_image("img")
    fake_smolvm.create("m", image="img")
    fake_smolvm.set_fault(VERSION="1.14.0", DIE_AFTER=0.5)
    r = run_exec(fake_smolvm, "--", "sleep", "60")
    assert r.stderr == "Error: io operation failed: connection closed\n"


def test_vm_dying_mid_stream(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.create("m")
    fake_smolvm.set_fault(DIE_AFTER=0.5)
    r = run_exec(fake_smolvm, "--stream", "--", "sh", "-c", "echo early; exec sleep 60")
    assert (r.returncode, r.stdout) == (1, "early\n")
    assert r.stderr == "error: io operation failed: connection closed\n"


def test_vm_dying_mid_interactive_image_exec(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.add_image("img")
    fake_smolvm.create("m", image="img")
    fake_smolvm.set_fault(DIE_AFTER=0.5)
    r = run_exec(fake_smolvm, "-i", "--", "sleep", "60")
    assert r.stderr == "Error: agent operation failed: run interactive: connection to VM lost\n"
    fake_smolvm.create("m", image="img")
    r = run_exec(fake_smolvm, "--", "sleep", "60")
    assert r.stderr == "Error: io operation failed: connection closed\n"


def test_spawn_failures_name_the_mode(fake_smolvm: FakeSmolvm) -> None:
    # handle_vm_exec says "failed to spawn command"; the interactive and streaming paths send
    # the bare io::Error under their own operation names (src/agent/client.rs).
    fake_smolvm.create("m")
    enoent = "No such file or directory (os error 2)"
    assert run_exec(fake_smolvm, "--stream", "--", "no-such-cmd").stderr == (
        f"Error: agent operation failed: streaming exec: {enoent}\n")
    assert run_exec(fake_smolvm, "-i", "--", "no-such-cmd").stderr == (
        f"Error: agent operation failed: vm exec interactive: {enoent}\n")


def test_default_machine_hints(fake_smolvm: FakeSmolvm) -> None:
    # ensure_running_and_connect: without --name the hint has no --name; status without a
    # default record says "not running" and exits 0.
    fake_smolvm.create("default", running=False)
    r = fake_smolvm.run("machine", "exec", "--", "true")
    assert r.stderr == ("Error: agent operation failed: connect: machine 'default' is not "
                        "running. Use 'smolvm machine start' first.\n")
    fake_smolvm.run("machine", "delete", "-n", "default", "-f")
    r = fake_smolvm.run("machine", "status")
    assert (r.returncode, r.stdout) == (0, "Machine 'default': not running\n")


@pytest.mark.parametrize("sub", ["create", "stop", "delete", "status", "ls", "exec", "cp"])
def test_delay_fault_makes_a_step_hang(fake_smolvm: FakeSmolvm, tmp_path: Path, sub: str) -> None:
    fake_smolvm.create("m")
    (tmp_path / "f").write_text("x")
    args = {
        "create": ["create", "-n", "new"], "stop": ["stop", "-n", "m"],
        "delete": ["delete", "-n", "m", "-f"], "status": ["status", "-n", "m"],
        "ls": ["ls"], "exec": ["exec", "--name", "m", "--", "touch", str(tmp_path / "ran")],
        "cp": ["cp", str(tmp_path / "f"), f"m:{tmp_path}/copied"],
    }[sub]
    fake_smolvm.set_fault(**{f"DELAY_{sub.upper()}": 60})
    p = subprocess.Popen([str(FAKE_SMOLVM), "machine", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(fake_smolvm.calls()) == 1, "the call to be logged")
        time.sleep(0.5)
        assert p.poll() is None  # hanging, and nothing done yet
        rec = fake_smolvm.machine("m")
        assert rec is not None and rec["state"] == "running"
        assert fake_smolvm.machine("new") is None
        assert not (tmp_path / "ran").exists() and not (tmp_path / "copied").exists()
    finally:
        p.kill()
        p.wait()
