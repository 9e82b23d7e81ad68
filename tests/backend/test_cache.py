"""What bottle keeps across processes (bottle._cache): smolvm's answers by its file, the guest
user behind a check in the guest, a private directory, corrupt files, concurrent writers.

Each test has its own $XDG_CACHE_HOME (the `private_cache` autouse fixture); the CLI runs are
real processes against the fake smolvm, whose call log shows what each one asked.
"""

from __future__ import annotations

import marshal
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, BOTTLE, ROOT_IMAGE, image_machine
from harness.backend import run_bottle as bottle

from bottle import _cache

pytestmark = pytest.mark.usefixtures("test_images")



def smolvm_calls(fake_smolvm: Any, since: int) -> list[list[str]]:
    return fake_smolvm.calls()[since:]


# --- the store itself ----------------------------------------------------------------------


def test_entries_round_trip_in_a_private_directory(private_cache: Path) -> None:
    _cache.store("k", ["a", 1], {"x": [1, 2]})
    assert _cache.load("k", ["a", 1]) == {"x": [1, 2]}
    assert _cache.load("k", ["a", 2]) is None
    assert _cache.load("other", ["a", 1]) is None
    where = private_cache / "bottle"
    assert oct(where.stat().st_mode & 0o777) == "0o700"
    (entry,) = where.iterdir()
    assert oct(entry.stat().st_mode & 0o777) == "0o600"
    _cache.forget("k", ["a", 1])
    assert _cache.load("k", ["a", 1]) is None


def test_a_directory_open_to_others_is_made_private(private_cache: Path) -> None:
    where = private_cache / "bottle"
    where.mkdir(mode=0o777)
    where.chmod(0o777)
    _cache.store("k", ["a"], {"v": 1})
    assert oct(where.stat().st_mode & 0o777) == "0o700"
    assert _cache.load("k", ["a"]) == {"v": 1}


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe", b"[]", b'{"format": 1, "kind": "k", "key": ["a"], "value": {}}',
     marshal.dumps({"format": 2, "kind": "k", "key": ["b"], "value": {"v": 1}}),
     marshal.dumps({"format": 99, "kind": "k", "key": ["a"], "value": {"v": 1}}),
     marshal.dumps({"format": 2, "kind": "k", "key": ["a"], "value": {"v": (1, 2.5)}}),
     marshal.dumps({"format": 2, "kind": "k", "key": ["a"], "value": {"v": compile("1", "", "eval")}
                    }),
     marshal.dumps({"format": 2, "kind": "k", "key": ["a"], "value": {"v": 1}})[:-3],
     b"x" * 100_000],
)  # fmt: skip
def test_a_corrupt_or_foreign_entry_is_a_miss_and_is_replaced(
    private_cache: Path, content: bytes
) -> None:
    _cache.store("k", ["a"], {"v": 1})
    (entry,) = (private_cache / "bottle").iterdir()
    entry.write_bytes(content)
    assert _cache.load("k", ["a"]) is None
    _cache.store("k", ["a"], {"v": 2})
    assert _cache.load("k", ["a"]) == {"v": 2}


def test_a_directory_not_ours_is_not_used(private_cache: Path, require_node_user: Any) -> None:
    where = private_cache / "bottle"
    where.mkdir(mode=0o700)
    node = pwd.getpwnam("node")
    os.chown(where, node.pw_uid, node.pw_gid)
    _cache.store("k", ["a"], {"v": 1})
    assert list(where.iterdir()) == []
    assert _cache.load("k", ["a"]) is None


def test_a_symlink_is_not_followed(private_cache: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (private_cache / "bottle").symlink_to(elsewhere)
    _cache.store("k", ["a"], {"v": 1})
    assert list(elsewhere.iterdir()) == []
    assert _cache.load("k", ["a"]) is None


def test_without_a_usable_base_there_is_no_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A relative XDG_CACHE_HOME is ignored (the XDG rules): HOME's .cache it is.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _cache.directory() == str(tmp_path / ".cache" / "bottle")
    monkeypatch.delenv("HOME")
    assert _cache.directory() is None
    _cache.store("k", ["a"], {"v": 1})  # nothing to write to: nothing happens
    assert _cache.load("k", ["a"]) is None


WRITER = """
import sys
from bottle import _cache
n = int(sys.argv[1])
for i in range(200):
    _cache.store("k", ["shared"], {"writer": n, "i": i, "pad": "x" * 2000})
    got = _cache.load("k", ["shared"])
    assert got is not None and len(got["pad"]) == 2000, got
"""


def test_concurrent_writers_never_leave_half_an_entry(private_cache: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(n)]) for n in range(4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    got = _cache.load("k", ["shared"])
    assert got is not None and got["i"] == 199
    assert [p.name for p in (private_cache / "bottle").iterdir()] == [
        next((private_cache / "bottle").iterdir()).name
    ]  # no temporary file left behind


# --- smolvm's answers, by its file ---------------------------------------------------------


def test_a_second_exec_asks_smolvm_nothing_but_the_exec(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # no exec --user: the guest user is asked
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    first = bottle("exec", "-n", "m", "id -un")
    assert (first.returncode, first.stdout) == (0, "node\n"), first.stderr
    assert fake_smolvm.subcommands() == ["--version", "exec", "exec", "exec"]  # --help, id, it
    before = len(fake_smolvm.calls())
    second = bottle("exec", "-n", "m", "id -un")
    assert (second.returncode, second.stdout, second.stderr) == (0, "node\n", "")
    (call,) = smolvm_calls(fake_smolvm, before)
    assert call[:2] == ["machine", "exec"]
    assert call[-3:] == ["/bin/sh", "-c", "id -un"]


def test_another_smolvm_is_asked_again(fake_smolvm: Any, tmp_path: Path) -> None:
    """A new build in the same place (another size, mtime or inode) is a new key."""
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    copy = tmp_path / "smolvm"
    text = fake_smolvm.path.read_text().replace(
        "os.path.dirname(os.path.realpath(__file__))", repr(str(fake_smolvm.path.parent))
    )
    copy.write_text(text)
    copy.chmod(0o755)
    env = {**os.environ, "BOTTLE_SMOLVM": str(copy)}
    assert bottle("exec", "-n", "m", "true", env=env).returncode == 0
    before = len(fake_smolvm.calls())
    assert bottle("exec", "-n", "m", "true", env=env).returncode == 0
    assert len(smolvm_calls(fake_smolvm, before)) == 1
    copy.write_text(text + "# another build\n")
    before = len(fake_smolvm.calls())
    assert bottle("exec", "-n", "m", "true", env=env).returncode == 0
    asked = [c[0] if c[0].startswith("-") else c[1] for c in smolvm_calls(fake_smolvm, before)]
    assert asked[0] == "--version"
    assert len(asked) == 4  # --version, exec --help, id, the command


# --- the guest user: kept, and checked in the guest before anything runs -------------------
# At 1.9.3: no `exec --user`, so bottle must know who the guest runs commands as.


def test_a_machine_made_again_as_root_never_runs_a_command_meant_for_node_as_root(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    """The kept answer (`node` runs commands, so run directly) is wrong for a machine of the
    same name on an image without USER: the command must run as node through runuser, once."""
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    assert bottle("exec", "-n", "m", "id -un").stdout == "node\n"
    fake_smolvm.run("machine", "delete", "-n", "m", "-f")
    image_machine(fake_smolvm, "m", image=ROOT_IMAGE)
    before = len(fake_smolvm.calls())
    log = shared_dir / "runs"
    proc = bottle("exec", "-n", "m", f"id -un >> {log}; id -un")
    assert (proc.returncode, proc.stdout) == (0, "node\n"), proc.stderr
    assert log.read_text() == "node\n"
    first, then = [c[c.index("--") + 1 :] for c in smolvm_calls(fake_smolvm, before)]
    assert first[:3] == ["/bin/sh", "-c", first[2]]  # the guard, which stopped it, saying `id`
    at = then.index("runuser")
    assert then[at : at + 4] == ["runuser", "-u", "node", "--"]  # so run as node, once


def test_a_refused_command_took_none_of_its_input(fake_smolvm: Any, shared_dir: Path) -> None:
    """`exec -i`: stdin is forwarded only once the check has let the command through, so what
    the refused run never read is all there for the run that follows (smolvm reads its stdin
    from the start: given it directly, the refused run would have swallowed it)."""
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    assert bottle("exec", "m", "true").returncode == 0
    fake_smolvm.run("machine", "delete", "-n", "m", "-f")
    image_machine(fake_smolvm, "m", image=ROOT_IMAGE)
    before = len(fake_smolvm.calls())
    data = "".join(f"line {n}\n" for n in range(2000))
    proc = bottle("exec", "-i", "m", "sh", "-c", 'echo "$(id -un)" >&2; cat', input=data)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, data, "node\n")
    assert len(smolvm_calls(fake_smolvm, before)) == 2  # refused, then run


def test_a_machine_made_again_with_user_node_runs_directly(fake_smolvm: Any) -> None:
    """The other way round: the kept answer (root, so runuser) would fail on a node machine."""
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m", image=ROOT_IMAGE)
    assert bottle("exec", "-n", "m", "id -un").stdout == "node\n"
    fake_smolvm.run("machine", "delete", "-n", "m", "-f")
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    proc = bottle("exec", "-n", "m", "id -un")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "node\n", "")
    # ... and a user the new machine cannot switch to is refused on what it says now.
    proc = bottle("exec", "-n", "m", "-u", "root", "id -un")
    assert proc.returncode == 125
    assert "runs guest commands as 'node'" in proc.stderr


def test_a_guest_line_like_the_guards_does_not_run_a_command_twice(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    assert bottle("exec", "-n", "m", "true").returncode == 0
    log = shared_dir / "runs"
    script = f'echo run >> {log}; echo "bottle-guard 0123456789abcdef: uid=0(root)" >&2; exit 125'
    proc = bottle("exec", "-n", "m", script)
    assert proc.returncode == 125
    assert log.read_text() == "run\n"


def test_a_corrupt_cache_file_costs_only_a_new_question(
    fake_smolvm: Any, private_cache: Path
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact stderr: no paste warning of an older one
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    assert bottle("exec", "-n", "m", "true").returncode == 0
    for entry in (private_cache / "bottle").iterdir():
        entry.write_text('{"format": 1, "kind": "guest", "key": [], "value": {"user": ')
    proc = bottle("exec", "-n", "m", "id -un")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "node\n", "")
    entries = [marshal.loads(e.read_bytes()) for e in (private_cache / "bottle").iterdir()]
    assert sorted(e["kind"] for e in entries) == ["guest", "smolvm"]  # written again, whole


def test_concurrent_first_execs_share_one_cache(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m", image=ROOT_IMAGE)
    procs = [
        subprocess.Popen([*BOTTLE, "exec", "-n", "m", f"echo {n}; id -un"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for n in range(4)
    ]  # fmt: skip
    outs = [p.communicate(timeout=60) for p in procs]
    assert [(p.returncode, out) for p, (out, _) in zip(procs, outs, strict=True)] == [
        (0, f"{n}\nnode\n") for n in range(4)
    ], outs
    before = len(fake_smolvm.calls())
    assert bottle("exec", "-n", "m", "true").returncode == 0
    assert len(smolvm_calls(fake_smolvm, before)) == 1


def test_a_copy_made_on_a_kept_answer_is_checked_too(
    fake_smolvm: Any, shared_dir: Path, tmp_path: Path
) -> None:
    """A directory's tar runs as the kept answer says, behind the check: on a machine made
    again, nothing is unpacked by the refused tar, and the copy is done as the machine needs
    (here root, so the files are root's, as on a machine bottle never saw)."""
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    assert bottle("exec", "m", "true").returncode == 0  # kept: node runs commands
    fake_smolvm.run("machine", "delete", "-n", "m", "-f")
    image_machine(fake_smolvm, "m", image=ROOT_IMAGE)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data").write_bytes(bytes(range(256)))
    before = len(fake_smolvm.calls())
    proc = bottle("cp", str(src), f"m:{shared_dir}/")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    copied = shared_dir / "src" / "sub" / "data"
    assert copied.read_bytes() == bytes(range(256))
    assert (copied.stat().st_uid, (shared_dir / "src").stat().st_uid) == (0, 0)
    ids, refused, tar = [c[c.index("--") + 1 :] for c in smolvm_calls(fake_smolvm, before)]
    assert ids == ["id", "--", "node"]  # the archive's owner, as the kept answer had it
    assert refused[:3] == ["/bin/sh", "-c", refused[2]] and "tar -x" in " ".join(refused)
    assert tar[0] == "env" and "tar -x" in " ".join(tar)  # as root, as the refusal said
    # Back, on what was learnt then: the guest is never asked who it runs commands as.
    before = len(fake_smolvm.calls())
    proc = bottle("cp", f"m:{shared_dir}/src", str(tmp_path / "back"))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert (tmp_path / "back" / "sub" / "data").read_bytes() == bytes(range(256))
    assert ["id"] not in [c[c.index("--") + 1 :] for c in smolvm_calls(fake_smolvm, before)
                          if "--" in c]  # fmt: skip
