"""Black-box conformance of the PTY relay: the relay contract's behaviours, on real ptys.

Every test runs against both implementations (the ``impl`` fixture): the native extension
(forced with BOTTLE_REQUIRE_EXTENSION=1) and the pure-Python twin (BOTTLE_NO_EXTENSIONS=1),
and in both output modes (the ``mode`` fixture): copy, where the relay copies the child's
output from its pty, and direct, where the child writes to the user's terminal itself.
Expectations on output fold CR LF to LF (``Session.text``): only copy mode passes the child's
output through its pty's ``\n`` → ``\r\n`` processing; `TestOutputModes` pins that down.
The test plays the user's terminal: it owns the master of the pty whose slave is the relay's
stdin, stdout, stderr and controlling terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.relay import (
    BLOB_WRITER_CHILD,
    ECHO_CHILD,
    PY,
    RELAY_ARGV,
    WINCH_CHILD,
    Session,
    alive,
    assert_no_leftovers,
    assert_restored,
    context_switches,
    echo_roundtrip,
    gate_wait,
    implementation_env,
    make_blob,
    native_built,
    output_args,
    proc_state,
    raw_violations,
    read_ints,
    shown,
    stopped,
    vm_rss_kib,
    wait_until,
    where_lost,
)

# The fixtures ``impl``, ``mode`` and ``spawn`` come from the harness.

Spawn = Callable[..., Session]

pytestmark = pytest.mark.timeout(90)


def sh(script: str) -> list[str]:
    """A ``sh -c`` child."""
    return ["sh", "-c", script]


def py(code: str, *args: object) -> list[str]:
    """A Python child."""
    return [PY, "-c", textwrap.dedent(code), *map(str, args)]


# Canonical; on SIGINT it looks (without waiting) whether a whole line is on its pty. With
# "then-raw" it then goes raw as smolvm does (TCSAFLUSH) and reports the line it reads.
PROBE_CHILD = """
import os, select, signal, sys, termios, tty
def probe(*_):
    ready = select.select([0], [], [], 0)[0]
    os.write(1, b"KEY-ARRIVED\\n" if ready else b"KEY-MISSING\\n")
    if sys.argv[1:] == ["then-raw"]:
        tty.setraw(0, termios.TCSAFLUSH)
        data = b""
        while not data.endswith(b"\\r") and select.select([0], [], [], 20)[0]:
            data += os.read(0, 100)
        os.write(1, b"GOT:" + data + b"\\n")
    os._exit(0)
signal.signal(signal.SIGINT, probe)
os.write(1, b"READY\\n")
while True:
    signal.pause()
"""


def program_in(tmp: Path, name: str, text: str) -> Path:
    """A directory for PATH holding one executable file, ``name``, that reads ``text``."""
    bindir = tmp / "bin"
    bindir.mkdir()
    prog = bindir / name
    prog.write_text(text)
    prog.chmod(0o755)
    return bindir


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of ``pid`` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def last_size(report: Path) -> tuple[int, int] | None:
    """The last size a WINCH_CHILD reported."""
    values = read_ints(report)
    return (values[-2], values[-1]) if len(values) >= 2 else None


def reported_sizes(report: Path) -> list[tuple[int, int]]:
    """Every size a WINCH_CHILD reported, in order."""
    values = read_ints(report)
    return list(zip(values[::2], values[1::2], strict=False))


# --------------------------------------------------------------------------- front module


class TestFront:
    def test_native_is_the_default_when_built(self) -> None:
        if not native_built():
            if os.environ.get("BOTTLE_REQUIRE_EXTENSION"):
                pytest.fail("BOTTLE_REQUIRE_EXTENSION=1 but bottle._ptyrelay is not installed")
            pytest.skip("native extension not built")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTTLE_")}
        out = subprocess.run(
            [PY, "-c", "import bottle.relay as r; print(r.IMPLEMENTATION)"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "native"

    def test_no_extensions_forces_pure(self) -> None:
        out = subprocess.run(
            [PY, "-c", "import bottle.relay as r; print(r.IMPLEMENTATION)"],
            env=implementation_env("pure"), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "pure"

    @pytest.mark.parametrize("require", ["", "1"])
    def test_unimportable_extension(self, require: str) -> None:
        """Without the extension: the pure twin, or ImportError when the run demands native
        (on loading the relay: `import bottle.relay` alone loads nothing, see its docstring)."""
        code = textwrap.dedent(
            """
            import sys
            sys.modules["bottle._ptyrelay"] = None  # makes the import fail like a missing .so
            try:
                from bottle.relay import IMPLEMENTATION
            except ImportError as exc:
                print("ImportError", exc)
            else:
                print(IMPLEMENTATION)
            """
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTTLE_")}
        if require:
            env["BOTTLE_REQUIRE_EXTENSION"] = require
        out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        if require:
            assert out.stdout.startswith("ImportError"), out.stdout
        else:
            assert out.stdout.strip() == "pure"


# --------------------------------------------------------------------------- 1. initial size


class TestInitialSize:
    def test_child_starts_with_the_terminal_size(self, spawn: Spawn) -> None:
        s = spawn(["stty", "size"], rows=37, cols=113)
        assert s.wait() == 0, s.describe()
        assert "37 113\n" in s.text(), s.describe()

    def test_size_is_set_before_the_child_starts(self, spawn: Spawn) -> None:
        # The very first thing the child does is read its size, like smolvm does.
        s = spawn(py("import os; os.write(1, b'%d %d|' % os.get_terminal_size(0)[::-1])"),
                  rows=51, cols=167)
        assert s.wait() == 0, s.describe()
        assert "51 167|" in s.text(), s.describe()

    def test_zero_size_terminal_gives_24x80(self, spawn: Spawn) -> None:
        s = spawn(["stty", "size"], rows=0, cols=0)
        assert s.wait() == 0, s.describe()
        assert "24 80\n" in s.text(), s.describe()

    def test_stdout_piped_takes_the_size_of_the_terminal_on_stdin(self, spawn: Spawn) -> None:
        s = spawn(["stty", "size"], rows=33, cols=101, stdout="pipe")
        assert s.wait() == 0, s.describe()
        assert "33 101\n" in s.text(), s.describe()
        assert_restored(s)

    def test_stdin_piped_takes_the_size_of_the_terminal_on_stdout(self, spawn: Spawn) -> None:
        s = spawn(["stty", "size"], rows=35, cols=103, stdin=b"")
        assert s.wait() == 0, s.describe()
        # (stdout is not put in raw mode here: its own ONLCR may add a second CR)
        assert re.search(r"35 103\r*\n", s.text()), s.describe()
        assert_restored(s)

    def test_pipes_give_24x80(self, spawn: Spawn) -> None:
        s = spawn(["stty", "size"], stdin=b"", stdout="pipe")
        assert s.wait() == 0, s.describe()
        assert "24 80\n" in s.text(), s.describe()


# --------------------------------------------------------------------------- 2. session, signals


class TestSessionAndSignals:
    def test_child_is_session_leader_with_the_pty_as_controlling_terminal(
        self, spawn: Spawn
    ) -> None:
        s = spawn(py(
            """
            import os
            pid = os.getpid()
            fields = [os.getsid(0) == pid, os.getpgrp() == pid, os.tcgetpgrp(0) == pid,
                      os.isatty(0), os.isatty(1), os.isatty(2), os.ttyname(0)]
            tty_nr = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
            fields.append(tty_nr == os.fstat(0).st_rdev)  # the controlling terminal
            print("INFO", *fields)
            """
        ))
        assert s.wait() == 0, s.describe()
        m = re.search(r"INFO (.*)\n", s.text())
        assert m, s.describe()
        sid, pgrp, fg, tty0, tty1, tty2, name, ctty_is_stdin = m.group(1).split()
        assert [sid, pgrp, fg] == ["True"] * 3, "child is not a session leader in the foreground"
        assert [tty0, tty1, tty2] == ["True"] * 3
        assert name.startswith("/dev/pts/") and name != s.terminal.name, name
        assert ctty_is_stdin == "True", "controlling terminal is not the child's pty"

    def test_child_inherits_no_relay_descriptor(self, spawn: Spawn) -> None:
        # A leaked pty master or wake-up pipe would keep the pty open or the relay's signal
        # path alive in the child; the relay was started with nothing but its stdio open.
        # The child checks its own descriptors with fstat, which opens none (a shell listing
        # /proc/$$/fd through a pipeline could catch its own pipe before closing it).
        s = spawn(py(
            """
            import os
            def is_open(fd):
                try:
                    os.fstat(fd)
                except OSError:
                    return False
                return True
            print("FDS", *[fd for fd in range(4096) if is_open(fd)], "END")
            """
        ))
        assert s.wait() == 0, s.describe()
        m = re.search(r"FDS ([0-9 ]*)END", s.text())
        assert m, s.describe()
        assert m.group(1).split() == ["0", "1", "2"], f"open in the child: {m.group(1)}"

    def test_default_dispositions_and_empty_mask(self, spawn: Spawn) -> None:
        s = spawn(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
        assert s.wait() == 0, s.describe()
        masks = dict(re.findall(r"(Sig\w+):\s*([0-9a-f]+)", s.text()))
        assert masks.get("SigIgn") == "0" * 16, f"ignored signals leak to the child: {masks}"
        assert masks.get("SigBlk") == "0" * 16, f"blocked signals leak to the child: {masks}"

    def test_sigpipe_is_not_ignored_in_the_child(self, spawn: Spawn) -> None:
        s = spawn(sh("yes | head -1"))
        assert s.wait() == 0, s.describe()
        assert "y\n" in s.text(), s.describe()
        assert "Broken pipe" not in s.text(), s.describe()


# --------------------------------------------------------------------------- 3. raw mode, restore


class TestRawModeAndRestore:
    def test_raw_while_relaying_and_exactly_restored_after(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        gate = tmp_path / "gate"
        s = spawn(sh(f"echo READY; {gate_wait(gate)}; exit 0"))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), f"terminal never left canonical mode\n{s.describe()}"
        assert raw_violations(s.terminal.attrs(), s.mode, s.terminal.saved) == [], s.describe()
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert_restored(s)

    def test_control_characters_reach_the_child_not_the_relay(self, spawn: Spawn) -> None:
        # Ctrl-C typed by the user is a byte for the child's pty, which turns it into SIGINT
        # for the child; the relay itself is not interrupted.
        s = spawn(sh(
            "trap 'echo INT-IN-CHILD; exit 3' INT; echo READY; while :; do sleep 0.05; done"
        ))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        s.send(b"\x03")
        assert s.wait(30) == 3, s.describe()
        assert "INT-IN-CHILD" in s.text()
        assert_restored(s)

    def test_restored_when_the_child_is_killed(self, spawn: Spawn, tmp_path: Path) -> None:
        gate = tmp_path / "gate"
        s = spawn(sh(f"echo READY; {gate_wait(gate)}; kill -KILL $$"))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        gate.touch()
        assert s.wait() == 128 + signal.SIGKILL, s.describe()
        assert_restored(s)

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT],
                             ids=lambda sig: sig.name)
    def test_restored_on_signal_to_the_relay(
        self, spawn: Spawn, tmp_path: Path, sig: signal.Signals
    ) -> None:
        pidfile = tmp_path / "pid"
        s = spawn(sh(f"echo $$ > {pidfile}; echo READY; exec sleep 60"))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        child = read_ints(pidfile)[0]
        os.kill(s.relay_pid, sig)
        rc = s.wait()
        assert rc in (128 + sig, -sig), f"status {rc} after {sig.name}\n{s.describe()}"
        assert_restored(s)
        assert wait_until(lambda: not alive(child), 5), f"child {child} survived {sig.name}"
        assert_no_leftovers(s)


# --------------------------------------------------------------------------- 4. bytes


class TestBytes:
    def test_all_byte_values_both_ways(self, spawn: Spawn, tmp_path: Path) -> None:
        data = bytes(range(256)) * 64 + bytes(range(255, -1, -1)) * 64 + b"\0\0\xff\xff"
        result = tmp_path / "result"
        s = spawn(py(ECHO_CHILD, len(data), result))
        echo_roundtrip(s, data, result)

    def test_split_utf8_sequences_both_ways(self, spawn: Spawn, tmp_path: Path) -> None:
        text = "é€𝄞█ü"
        data = text.encode()
        # Each chunk ends in the middle of a multi-byte sequence.
        chunks = [data[0:1], data[1:3], data[3:6], data[6:9], data[9:12], data[12:]]
        assert b"".join(chunks) == data
        result = tmp_path / "result"
        s = spawn(py(ECHO_CHILD, len(data), result))
        echo_roundtrip(s, data, result, chunks=chunks, pause=0.1)

    def test_split_utf8_output(self, spawn: Spawn) -> None:
        s = spawn(py(
            """
            import os, time, tty
            tty.setraw(0)
            data = "€𝄞é".encode()
            for i in range(len(data)):
                os.write(1, data[i:i + 1])
                time.sleep(0.03)
            os.write(1, b"|END")
            """
        ))
        assert s.wait() == 0, s.describe()
        assert s.output().endswith("€𝄞é|END".encode()), s.describe()

    def test_megabytes_of_escape_sequences_out(self, spawn: Spawn) -> None:
        size = 4 << 20
        blob = make_blob(1, size)
        s = spawn(py(BLOB_WRITER_CHILD, 1, size))
        assert s.wait(60) == 0, s.describe()
        out = s.output()
        head, tail = shown(b"READY\n", s.mode), shown(b"END\n", s.mode)
        assert out.startswith(head) and out.endswith(tail), s.describe()
        body = out[len(head):-len(tail)]
        assert len(body) == len(shown(blob, s.mode))
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(shown(blob, s.mode)).hexdigest()

    def test_megabytes_out_to_a_pipe(self, spawn: Spawn) -> None:
        size = 2 << 20
        blob = make_blob(5, size)
        s = spawn(py(BLOB_WRITER_CHILD, 5, size), stdin=b"", stdout="pipe")
        assert s.wait(60) == 0, s.describe()
        assert s.output() == b"READY\n" + blob + b"END\n"

    def test_megabytes_of_escape_sequences_in_and_back(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        data = make_blob(2, 4 << 20)
        result = tmp_path / "result"
        s = spawn(py(ECHO_CHILD, len(data), result))
        echo_roundtrip(s, data, result)

    def test_output_flows_while_the_child_ignores_a_huge_paste(self, spawn: Spawn) -> None:
        size = 2 << 20
        blob = make_blob(3, size)
        s = spawn(py(BLOB_WRITER_CHILD, 3, size, 0.3))
        head, tail, blob = (shown(data, s.mode) for data in (b"READY\n", b"END\n", blob))
        s.expect(head)
        paste = make_blob(4, 8 << 20)
        sent = s.send_background(paste)
        assert s.wait(60) == 0, s.describe()
        # The paste goes on after the relay has restored the terminal: the line discipline
        # echoes what it still takes, after END. Up to END, the output is exactly the child's.
        out = s.output()
        end = len(head) + len(blob)
        assert out[end : end + len(tail)] == tail, s.describe()
        body = out[len(head) : end]
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(blob).hexdigest()
        # The paste was really blocked (the child never read it), not silently swallowed whole.
        assert sent() < len(paste)

    def test_memory_stays_flat(self, spawn: Spawn, tmp_path: Path) -> None:
        """A stalled reader and a child that ignores a paste must not grow the relay's memory."""
        gate = tmp_path / "gate"
        out_size = 32 << 20
        s = spawn(py(
            f"""
            import os, sys, time, tty
            tty.setraw(0)
            os.write(1, b"READY\\n")
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.01)
            chunk = b"z" * 65536
            for _ in range({out_size // 65536}):
                os.write(1, chunk)
            os.write(1, b"END\\n")
            """
        ))
        start = s.expect(shown(b"READY\n", s.mode))
        relay = s.relay_pid
        time.sleep(0.3)
        baseline = vm_rss_kib(relay)
        s.reading.clear()  # the user's terminal stops reading: output must back up, not pile up
        sent = s.send_background(b"p" * (32 << 20))  # the child never reads this
        gate.touch()
        peak = baseline
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            peak = max(peak, vm_rss_kib(relay))
            time.sleep(0.02)
        s.reading.set()
        assert s.wait(60) == 0, s.describe()
        body = s.output()[start:]
        assert body == shown(b"z" * out_size + b"END\n", s.mode), (
            f"{len(body)} bytes\n{s.describe()}"
        )
        growth_mib = (peak - baseline) / 1024
        assert growth_mib < 12, (
            f"relay RSS grew {growth_mib:.1f} MiB (baseline {baseline} KiB, peak {peak} KiB; "
            f"{sent()} bytes of paste accepted)"
        )


# --------------------------------------------------------------------------- 5. end of the child


class TestEndOfChild:
    def test_buffered_output_is_delivered(self, spawn: Spawn) -> None:
        expected = b"Bingo" * 1000 + b"END"
        for _ in range(3):
            s = spawn(sh("for i in $(seq 1000); do printf Bingo; done; printf END"))
            assert s.wait() == 0, s.describe()
            assert s.output() == expected, where_lost(s, expected)

    def test_output_pending_at_exit_survives_a_stalled_terminal(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        """The user's terminal reads nothing for a while (a slow link): when the child exits,
        everything it wrote is still in the pipeline and must all arrive once it reads again."""
        done = tmp_path / "done"
        s = spawn(py(
            """
            import os, sys, time, tty
            tty.setraw(0)
            os.set_blocking(1, False)
            stream = b"".join(b"%08d:" % n + bytes(range(48, 103)) + b"\\n" for n in range(1 << 17))
            # Fill every buffer between here and the stalled terminal, then exit.
            total, misses = 0, 0
            while misses < 5:
                try:
                    total += os.write(1, stream[total:total + 65536])
                    misses = 0
                except BlockingIOError:
                    misses += 1
                    time.sleep(0.1)
            open(sys.argv[1], "w").write(str(total))
            """, done))
        s.reading.clear()
        assert wait_until(lambda: done.exists() and done.read_text(), 30), s.describe()
        total = int(done.read_text())
        time.sleep(3)  # the terminal stays stalled a while after the child has gone
        s.reading.set()
        assert s.wait(30) == 0, s.describe()
        stream = b"".join(b"%08d:" % n + bytes(range(48, 103)) + b"\n" for n in range(1 << 17))
        assert total < len(stream), "the child never filled the pipeline"
        out, written = s.output(), shown(stream[:total], s.mode)
        assert len(out) == len(written), (
            f"{total} bytes written before the child exited, {len(out)} delivered "
            f"({len(written)} expected); last line delivered: {out[-64:]!r}"
        )
        assert out == written

    def test_background_grandchild_does_not_keep_the_relay(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pid"
        s = spawn(sh(f"sleep 60 & echo $! > {pidfile}; exit 5"))
        assert s.wait(15) == 5, s.describe()
        grandchild = read_ints(pidfile)[0]
        assert wait_until(lambda: not alive(grandchild), 5), "sleep 60 left behind"
        assert_restored(s)

    def test_grandchild_ignoring_hangup_does_not_keep_the_relay(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        # This grandchild survives its session's hang-up and keeps the pty open for 60 s.
        pidfile = tmp_path / "pid"
        s = spawn(sh(f"trap '' HUP; sleep 60 & echo $! > {pidfile}; exit 5"))
        assert s.wait(15) == 5, s.describe()
        assert_restored(s)

    def test_child_closing_its_stdio_is_not_killed_early(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        done = tmp_path / "done"
        s = spawn(sh(f"exec >&- 2>&- <&-; sleep 1; echo ok > {done}; exit 3"))
        assert s.wait(15) == 3, s.describe()
        assert done.read_text() == "ok\n"
        assert_restored(s)


# --------------------------------------------------------------------------- 6. status


class TestStatus:
    @pytest.mark.parametrize(("script", "status"), [
        ("exit 0", 0), ("exit 7", 7), ("exit 255", 255),
        ("kill -TERM $$", 143), ("kill -KILL $$", 137), ("kill -INT $$", 130),
    ])
    def test_status(self, spawn: Spawn, script: str, status: int) -> None:
        s = spawn(sh(script))
        assert s.wait() == status, s.describe()
        assert_restored(s)

    def test_missing_program_is_a_clear_error(self, spawn: Spawn) -> None:
        s = spawn(["no-such-program-7c1e", "arg"])
        rc = s.wait()
        assert rc != 0, s.describe()
        assert "no-such-program-7c1e" in s.text(), s.describe()
        assert "session ended" not in s.text()
        assert_restored(s)
        assert_no_leftovers(s)

    def test_python_api_returns_the_status(self, spawn: Spawn, mode: str) -> None:
        s = spawn(argv=[PY, "-c", "import sys, bottle.relay as r; "
                        f"sys.exit(r.run(['sh', '-c', 'echo API; exit 9'], output={mode!r}) + 1)"])
        assert s.wait() == 10, s.describe()
        assert "API\n" in s.text()
        assert_restored(s)

    @pytest.mark.parametrize("exc", ["FileNotFoundError", "PermissionError"])
    def test_python_api_raises_naming_the_program(
        self, spawn: Spawn, tmp_path: Path, exc: str, mode: str
    ) -> None:
        if exc == "FileNotFoundError":
            prog = str(tmp_path / "missing-prog")
        else:
            prog = str(tmp_path / "not-executable")
            Path(prog).write_text("#!/bin/sh\n")
            Path(prog).chmod(0o644)
        code = textwrap.dedent(
            f"""
            import bottle.relay as r
            try:
                r.run([{prog!r}], output={mode!r})
            except {exc} as e:
                print("RAISED", e)
            """
        )
        s = spawn(argv=[PY, "-c", code])
        assert s.wait() == 0, s.describe()
        m = re.search(r"RAISED (.*)", s.text())
        assert m and prog in m.group(1), s.describe()
        assert_restored(s)
        assert_no_leftovers(s)

    def test_python_api_resolves_argv0_on_the_env_path(
        self, spawn: Spawn, tmp_path: Path, mode: str
    ) -> None:
        bindir = program_in(tmp_path, "only-here-prog", "#!/bin/sh\necho FOUND-$MYVAR\nexit 4\n")
        code = (
            "import os, sys, bottle.relay as r; "
            f"env = dict(os.environ, PATH={str(bindir) + ':/usr/bin:/bin'!r}, MYVAR='x1'); "
            f"sys.exit(r.run(['only-here-prog'], env=env, output={mode!r}))"
        )
        s = spawn(argv=[PY, "-c", code])
        assert s.wait() == 4, s.describe()
        assert "FOUND-x1" in s.text()

    def test_bottle_relay_subcommand(self, spawn: Spawn, mode: str) -> None:
        s = spawn(argv=[PY, "-m", "bottle", "relay", *output_args(mode),
                        "--", "sh", "-c", "echo SUB; exit 6"])
        assert s.wait() == 6, s.describe()
        assert "SUB\n" in s.text()

    def test_a_script_without_interpreter_line_runs_with_sh(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        # execvp hands a file the kernel cannot run as it is (ENOEXEC: no "#!") to /bin/sh,
        # and the relay finds its commands like execvp.
        bindir = program_in(tmp_path, "no-hashbang", 'echo "RAN-BY-SH $# $1 $2"\nexit 7\n')
        s = spawn(["no-hashbang", "one", "two"],
                  extra_env={"PATH": f"{bindir}:{os.environ['PATH']}"})
        assert s.wait() == 7, s.describe()
        assert "RAN-BY-SH 2 one two\n" in s.text(), s.describe()
        assert_restored(s)


# --------------------------------------------------------------------------- 7. input EOF


class TestInputEof:
    def test_piped_input_reaches_cat_and_ends(self, spawn: Spawn) -> None:
        s = spawn(["cat"], stdin=b"x")
        assert s.wait() == 0, s.describe()
        assert "x" in s.text(), s.describe()

    def test_piped_input_to_a_pipe(self, spawn: Spawn) -> None:
        s = spawn(["cat"], stdin=b"x", stdout="pipe")
        assert s.wait() == 0, s.describe()
        assert s.text().endswith("x"), s.describe()

    @pytest.mark.parametrize("data", [b"x", b"line one\nline two\n", b"no newline\nat end"])
    def test_child_reads_exactly_the_piped_input(
        self, spawn: Spawn, tmp_path: Path, data: bytes
    ) -> None:
        got = tmp_path / "got"
        s = spawn(py(
            "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())", got
        ), stdin=data)
        assert s.wait() == 0, s.describe()
        assert got.read_bytes() == data


# --------------------------------------------------------------------------- 8. window changes


class TestWindowChanges:
    def start(self, spawn: Spawn, tmp_path: Path, **kwargs: object) -> tuple[Session, Path, Path]:
        report, gate = tmp_path / "sizes", tmp_path / "gate"
        s = spawn(py(WINCH_CHILD, report, gate), rows=30, cols=90, **kwargs)
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        assert last_size(report) == (30, 90)
        return s, report, gate

    def test_resize_reaches_the_child(self, spawn: Spawn, tmp_path: Path) -> None:
        s, report, gate = self.start(spawn, tmp_path)
        s.terminal.resize(50, 132)
        assert wait_until(lambda: last_size(report) == (50, 132)), reported_sizes(report)
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert last_size(report) == (50, 132)

    def test_burst_ends_on_the_last_size(self, spawn: Spawn, tmp_path: Path) -> None:
        s, report, gate = self.start(spawn, tmp_path)
        for i in range(200):
            s.terminal.resize(20 + i % 40, 60 + i)
        final = (20 + 199 % 40, 60 + 199)
        assert wait_until(lambda: last_size(report) == final), reported_sizes(report)[-5:]
        time.sleep(0.5)  # nothing stale may arrive after the last size
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert last_size(report) == final, reported_sizes(report)[-5:]

    def test_resize_during_a_slow_start_is_not_lost(
        self, spawn: Spawn, tmp_path: Path, mode: str
    ) -> None:
        """A resize landing while the relay starts up still reaches the child.

        strace holds the relay's first pipe2() for 1.5 s (any start-up step would do: the
        point is to widen whatever window lies between reading the terminal size and being
        able to hear SIGWINCH); the terminal is resized during that pause.
        """
        pipe2 = {"x86_64": 293, "aarch64": 59}.get(os.uname().machine)
        if shutil.which("strace") is None or pipe2 is None:
            pytest.skip("needs strace on x86_64 or aarch64 to slow the relay's start-up")
        report, gate = tmp_path / "sizes", tmp_path / "gate"
        s = spawn(argv=[
            "strace", "-o", "/dev/null", "-e", "trace=pipe2",
            "-e", "inject=pipe2:delay_exit=1500000:when=1",
            *RELAY_ARGV, *output_args(mode), "--", *py(WINCH_CHILD, report, gate),
        ], rows=30, cols=90)

        def relay_in_pipe2() -> bool:
            children = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text()
            for pid in children.split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/syscall").read_text().split()[0] == str(pipe2):
                        return True
            return False

        if not wait_until(relay_in_pipe2, 30, 0.005):
            pytest.fail(f"the relay never reached pipe2 under strace\n{s.describe()}")
        s.terminal.resize(44, 144)
        s.expect(b"READY")
        assert wait_until(lambda: last_size(report) == (44, 144), 5), (
            f"the child kept {reported_sizes(report)} after the terminal became 44x144"
        )
        gate.touch()
        assert s.wait() == 0, s.describe()

    def test_resize_applies_while_output_is_backed_up(self, spawn: Spawn, tmp_path: Path) -> None:
        report, gate = tmp_path / "sizes", tmp_path / "gate"
        s = spawn(py(
            """
            import fcntl, os, signal, struct, sys, termios
            report, gate = sys.argv[1], sys.argv[2]
            def report_size(*_):
                rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]
                with open(report, "a") as f:
                    f.write(f"{rows} {cols}\\n")
            signal.signal(signal.SIGWINCH, report_size)
            os.write(1, b"READY\\n")
            while not os.path.exists(gate):
                os.write(1, b"x" * 4096)  # blocks while the user's terminal is not reading
            """, report, gate), rows=30, cols=90)
        s.expect(b"READY")
        s.reading.clear()
        time.sleep(0.5)  # every buffer on the way out fills up
        s.terminal.resize(41, 121)
        assert wait_until(lambda: last_size(report) == (41, 121), 10), (
            f"resize not applied while output was backed up: {reported_sizes(report)}"
        )
        gate.touch()
        s.reading.set()
        assert s.wait() == 0, s.describe()

    def test_zero_size_is_never_forwarded(self, spawn: Spawn, tmp_path: Path) -> None:
        s, report, gate = self.start(spawn, tmp_path)
        s.terminal.resize(0, 0)
        time.sleep(0.5)
        s.terminal.resize(40, 100)
        assert wait_until(lambda: last_size(report) == (40, 100)), reported_sizes(report)
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert (0, 0) not in reported_sizes(report), reported_sizes(report)

    def test_resize_command(self, spawn: Spawn, tmp_path: Path) -> None:
        """Runs off the hot path, at most one in flight, latest size wins."""
        log, cmd_gate = tmp_path / "resize.log", tmp_path / "cmd-gate"
        script = tmp_path / "on-resize.sh"
        script.write_text(
            f'echo "start $1 $2 $3" >> {log}\n'
            f"{gate_wait(cmd_gate)}\n"
            f'echo "end $1 $2 $3" >> {log}\n'
        )
        template = f"sh {script} {{rows}} {{cols}} {{machine}}"
        result = tmp_path / "echo-result"
        probe = b"still-copying"
        bye = b"bye"
        s = spawn(py(ECHO_CHILD, len(probe) + len(bye), result), rows=30, cols=90,
                  relay_args=["--machine", "vm-7", "--resize-command", template])
        start = s.expect(shown(b"READY\n", s.mode))
        s.terminal.resize(31, 91)

        def lines() -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

        assert wait_until(lambda: any(x.startswith("start") for x in lines())), s.describe()
        # A resize command is stuck: bytes must still flow both ways.
        s.send(probe)
        assert s.wait_output_len(start + len(probe)), s.describe()
        assert s.output()[start:] == probe
        for i in range(30):
            s.terminal.resize(32 + i, 92 + i)
        time.sleep(0.5)
        in_flight = lines()
        assert sum(x.startswith("start") for x in in_flight) == 1, in_flight
        cmd_gate.touch()
        final = "end 61 121 vm-7"
        assert wait_until(lambda: lines() and lines()[-1] == final), lines()
        time.sleep(0.3)
        runs = lines()
        assert runs[-1] == final, runs
        # Strictly alternating: never two in flight.
        assert all(x.startswith("start" if i % 2 == 0 else "end") for i, x in enumerate(runs)), runs
        assert len(runs) <= 6, f"bursts were not coalesced: {runs}"
        assert all(x.split()[3] == "vm-7" for x in runs), runs
        s.send(bye)  # the echo child exits once it has everything
        assert s.wait() == 0, s.describe()


# --------------------------------------------------------------------------- 9. hang-up


class TestHangUp:
    def test_closing_the_terminal_ends_child_and_relay(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        pidfile, hupfile = tmp_path / "pid", tmp_path / "hup"
        s = spawn(sh(
            f"echo $$ > {pidfile}; trap 'echo hup > {hupfile}; exit 0' HUP; "
            "echo READY; while :; do sleep 0.05; done"
        ))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        child = read_ints(pidfile)[0]
        s.reading.clear()
        time.sleep(0.1)
        s.terminal.close_master()
        s.wait(10)
        assert wait_until(lambda: hupfile.exists(), 5), "child never got SIGHUP"
        assert wait_until(lambda: not alive(child), 5), "child still running"
        assert_no_leftovers(s)

    @pytest.mark.parametrize("child", [
        "exec sleep 60",
        "exec yes",
        "trap '' HUP; exec sleep 60",  # ignores SIGHUP: must still end
        "trap '' HUP; sleep 60 & wait",  # and its background job with it
    ])
    def test_hangup_leaves_nothing_running(self, spawn: Spawn, child: str) -> None:
        s = spawn(sh(f"echo READY; {child}"))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        s.reading.clear()
        time.sleep(0.1)
        s.terminal.close_master()
        s.wait(10)
        assert_no_leftovers(s)

    @pytest.mark.parametrize("child", ["sleep 60", "yes"])
    def test_hangup_seen_only_on_the_terminal(self, spawn: Spawn, child: str) -> None:
        # The relay runs as a job under a shell that ignores SIGHUP: the only sign of the
        # hang-up is end-of-file/EIO on the terminal itself.
        s = spawn(sh(f"echo READY; exec {child}"), jobshell=True,
                  extra_env={"JOBSHELL_IGNORE_HUP": "1"})
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        s.reading.clear()
        time.sleep(0.1)
        s.terminal.close_master()
        s.wait(10)
        assert_no_leftovers(s)


# --------------------------------------------------------------------------- 10. job control


class TestJobControl:
    def test_stop_restores_and_continue_reapplies_raw_and_size(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        report, gate = tmp_path / "sizes", tmp_path / "gate"
        s = spawn(py(WINCH_CHILD, report, gate), rows=30, cols=90, jobshell=True)
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        relay = s.relay_pid
        for size in [(45, 140), (25, 70), (52, 181)]:
            os.kill(relay, signal.SIGTSTP)
            assert wait_until(lambda: proc_state(relay) == "T", 10), (
                f"relay did not stop on SIGTSTP (state {proc_state(relay)})\n{s.describe()}"
            )
            assert_restored(s)
            s.terminal.resize(*size)  # the user resizes while the relay is stopped
            os.kill(relay, signal.SIGCONT)
            assert wait_until(lambda: proc_state(relay) not in ("T", None), 10)
            assert s.terminal.wait_raw(), f"not raw again after SIGCONT\n{s.describe()}"
            assert raw_violations(s.terminal.attrs(), s.mode, s.terminal.saved) == []
            assert wait_until(lambda: last_size(report) == size), reported_sizes(report)  # noqa: B023
        # Still relaying after the round trip.
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert_restored(s)


# --------------------------------------------------------------------------- 11. type-ahead


class TestTypeAhead:
    def test_keys_typed_before_the_child_goes_raw_are_delivered(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        started, got = tmp_path / "started", tmp_path / "got"
        typed = b"typed early 123\r"
        s = spawn(py(
            """
            import os, select, sys, termios, time, tty
            open(sys.argv[1], "w").close()
            time.sleep(0.5)
            tty.setraw(0, termios.TCSAFLUSH)  # what smolvm does once its session started
            want, data = int(sys.argv[3]), b""
            while len(data) < want and select.select([0], [], [], 20)[0]:
                data += os.read(0, 1024)
            open(sys.argv[2], "wb").write(data)
            """, started, got, len(typed)), relay_args=["--hold-until-raw"])
        assert wait_until(lambda: started.exists()), s.describe()
        assert s.terminal.wait_raw(), s.describe()
        s.send(typed)
        assert s.wait(40) == 0, s.describe()
        assert got.read_bytes() == typed

    def test_keys_typed_before_the_relay_started_are_delivered(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        # The user types while the VM boots, before the relay runs: the keys wait in the
        # terminal's own line buffer (no Enter yet) and must not be flushed away either.
        got = tmp_path / "got"
        early, late = b"typed-while-booting ", b"and-after\r"
        s = spawn(py(
            """
            import os, select, sys, termios, time, tty
            time.sleep(0.5)
            tty.setraw(0, termios.TCSAFLUSH)
            os.write(1, b"RAW\\n")
            want, data = int(sys.argv[2]), b""
            while len(data) < want and select.select([0], [], [], 20)[0]:
                data += os.read(0, 1024)
            open(sys.argv[1], "wb").write(data)
            """, got, len(early) + len(late)), typeahead=early, relay_args=["--hold-until-raw"])
        s.expect(b"RAW")
        s.send(late)
        assert s.wait(40) == 0, s.describe()
        assert got.read_bytes() == early + late

    def test_keys_reach_a_child_that_stays_canonical(self, spawn: Spawn) -> None:
        # Without --hold-until-raw a key goes through at once. Checked by causality, not a
        # stopwatch: the test waits until the relay has taken the key off the terminal, then
        # sends SIGINT, which the relay forwards only after it has written what it read; the
        # child then looks (select with no timeout: the kernel first pushes what is in flight)
        # whether the line is already on its pty.
        s = spawn(py(PROBE_CHILD))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        s.send(b"abc\r")
        assert wait_until(lambda: not select.select([s.terminal.slave], [], [], 0)[0]), (
            f"the relay never read the key\n{s.describe()}"
        )
        os.kill(s.relay_pid, signal.SIGINT)
        s.expect(b"KEY-")
        assert b"KEY-ARRIVED" in s.output(), f"the key was held back\n{s.describe()}"
        assert s.wait() == 0, s.describe()

    def test_keys_are_held_until_raw_with_the_option(self, spawn: Spawn) -> None:
        s = spawn(py(PROBE_CHILD, "then-raw"), relay_args=["--hold-until-raw"])
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        s.send(b"abc\r")
        assert wait_until(lambda: not select.select([s.terminal.slave], [], [], 0)[0]), (
            f"the relay never read the key\n{s.describe()}"
        )
        os.kill(s.relay_pid, signal.SIGINT)
        s.expect(b"GOT:")
        assert b"KEY-MISSING" in s.output(), f"a canonical child got the key\n{s.describe()}"
        s.expect(b"GOT:abc\r")  # released once the child went raw (TCSAFLUSH), not lost
        assert s.wait() == 0, s.describe()

    @pytest.mark.parametrize(
        ("stdin", "expected"),
        [(b"hello\n", b"hello\n\x04"), (b"part", b"part\x04\x04"), ("devnull", b"\x04"),
         ("closed", b"\x04")],
        ids=["pipe-line", "pipe-partial", "devnull", "closed"],
    )
    def test_input_and_its_end_are_held_whatever_stdin_is(
        self, spawn: Spawn, tmp_path: Path, stdin: str | bytes, expected: bytes
    ) -> None:
        # What smolvm does: canonical while the VM starts, then raw with TCSAFLUSH, which
        # discards whatever reached its pty before; the end of input (VEOF) included.
        got, gate = tmp_path / "got", tmp_path / "gate"
        s = spawn(py(
            """
            import os, select, sys, termios, time, tty
            got, gate, want = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
            os.write(1, b"READY\\n")
            while not os.path.exists(gate):
                time.sleep(0.01)
            tty.setraw(0, termios.TCSAFLUSH)
            data = b""
            while not data.endswith(want) and select.select([0], [], [], 20)[0]:
                data += os.read(0, 1024)
            open(got, "wb").write(data)
            """, got, gate, expected.hex()), stdin=stdin, relay_args=["--hold-until-raw"])
        s.expect(b"READY")
        relay = s.relay_pid
        before = cpu_ticks(relay)
        time.sleep(1.0)  # the input is read and held meanwhile; no test of time here
        spent = cpu_ticks(relay) - before
        gate.touch()
        assert s.wait(40) == 0, s.describe()
        assert got.read_bytes() == expected
        # Holding costs a check every 10 ms, not a spinning loop (100 ticks = a whole CPU).
        assert spent < 30, f"the relay used {spent} CPU ticks in 1 s while holding"

    def test_held_keys_outlast_a_slow_start(self, spawn: Spawn, tmp_path: Path) -> None:
        # smolvm on an image machine can take longer than 3 s to go raw.
        got = tmp_path / "got"
        s = spawn(py(
            """
            import os, select, sys, termios, time, tty
            os.write(1, b"READY\\n")
            time.sleep(4)
            tty.setraw(0, termios.TCSAFLUSH)
            data = b""
            while not data.endswith(b"\\r") and select.select([0], [], [], 20)[0]:
                data += os.read(0, 1024)
            open(sys.argv[1], "wb").write(data)
            """, got), relay_args=["--hold-until-raw"])
        s.expect(b"READY")
        s.send(b"early\r")
        assert s.wait(40) == 0, s.describe()
        assert got.read_bytes() == b"early\r"


    def test_ctrl_c_while_input_is_held_ends_the_start(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        # The user gives up while the child is still starting (smolvm waiting for the VM).
        # Held, the Ctrl-C would be replayed into the child once it went raw; it ends the
        # session instead: 130, the terminal restored, the child gone (this one even ignores
        # SIGINT), and nothing typed ever reaches it.
        got, gate = tmp_path / "got", tmp_path / "gate"
        s = spawn(py(
            """
            import os, select, signal, sys, termios, time, tty
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            got, gate = sys.argv[1], sys.argv[2]
            os.write(1, b"READY\\n")
            while not os.path.exists(gate):
                time.sleep(0.01)
            tty.setraw(0, termios.TCSAFLUSH)
            data = b""
            while select.select([0], [], [], 2)[0]:
                data += os.read(0, 100)
            open(got, "wb").write(data)
            """, got, gate), relay_args=["--hold-until-raw"])
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        s.send(b"typed\x03more")
        assert s.wait(20) == 130, s.describe()
        assert_restored(s)
        assert_no_leftovers(s)
        assert not got.exists(), got.read_bytes()

    def test_ctrl_c_once_the_child_is_raw_is_a_key(self, spawn: Spawn) -> None:
        # Once the child has gone raw the hold is over (even if the relay has not looked since,
        # having had nothing to hold): Ctrl-C is a byte for the child, as every other key.
        s = spawn(py(
            """
            import os, termios, tty
            tty.setraw(0, termios.TCSAFLUSH)
            os.write(1, b"RAW\\r\\n")
            data = b""
            while b"\\x03" not in data:
                data += os.read(0, 100)
            os.write(1, b"GOT:%s\\r\\n" % data.hex().encode())
            """), relay_args=["--hold-until-raw"])
        s.expect(b"RAW")
        s.send(b"a\x03")
        s.expect(b"GOT:6103")
        assert s.wait() == 0, s.describe()
        assert_restored(s)

# --------------------------------------------------------------------------- 12. idle


class TestIdle:
    @pytest.mark.parametrize("hold", [False, True], ids=["plain", "hold-over"])
    def test_idle_relay_does_not_wake_up(self, spawn: Spawn, hold: bool, tmp_path: Path) -> None:
        gate = tmp_path / "gate"  # the child ends once the test has measured
        if hold:  # the end of input was held, then released when the child went raw
            s = spawn(py("""
                import os, sys, time, tty
                tty.setraw(0)
                assert os.read(0, 1) == b"\\x04"
                os.write(1, b"READY\\n")
                while not os.path.exists(sys.argv[1]):
                    time.sleep(0.05)
                os.write(1, b"DONE\\n")
                """, gate), stdin="devnull", relay_args=["--hold-until-raw"])
        else:
            s = spawn(sh(f"echo READY; {gate_wait(gate)}; echo DONE"))
        s.expect(b"READY")
        assert hold or s.terminal.wait_raw(), s.describe()  # with /dev/null: no raw mode
        relay = s.relay_pid
        time.sleep(0.5)
        before = context_switches(relay)
        time.sleep(2.5)
        after = context_switches(relay)
        gate.touch()
        assert after - before <= 5, f"idle relay was scheduled {after - before} times in 2.5 s"
        assert s.wait() == 0, s.describe()
        assert "DONE" in s.text()


# --------------------------------------------------------------------------- 13. output modes


class TestOutputModes:
    def test_where_the_childs_output_goes(self, spawn: Spawn, mode: str) -> None:
        s = spawn(py(
            """
            import os
            os.write(1, ("OUT %s %s|" % (os.ttyname(0), os.ttyname(1))).encode())
            os.write(1, b"a\\nb|")
            with open("/dev/tty", "wb", buffering=0) as tty:
                tty.write(b"via-tty\\n")
            """
        ))
        assert s.wait() == 0, s.describe()
        out = s.output()
        m = re.search(rb"OUT (\S+) (\S+)\|", out)
        assert m, s.describe()
        pty, stdout = m.group(1).decode(), m.group(2).decode()
        assert pty != s.terminal.name
        # The pty's output processing (copy) or the terminal's (direct) turns LF into CR LF.
        assert b"a\r\nb|" in out, s.describe()
        if mode == "copy":
            assert stdout == pty, s.describe()
            tty_line = b"via-tty\r\n"
        else:
            assert stdout == s.terminal.name, s.describe()
            # Processed by the pty, then by the terminal once more: the same on the screen.
            tty_line = b"via-tty\r\r\n"
        # Whatever the child writes to its pty (here through /dev/tty) is copied in both modes.
        assert tty_line in out, s.describe()
        assert_restored(s)

    def test_plain_output_is_processed_alike(self, spawn: Spawn) -> None:
        # A child that leaves its pty cooked: in copy mode the pty's output processing (OPOST,
        # ONLCR) applies to every byte; in direct mode the user's terminal's does, which raw
        # mode leaves as the user had it (the test terminal's is the pty's default). Before,
        # direct mode turned it off and printf 'a\nb\n' came out as a staircase.
        s = spawn(py(
            """
            import os
            os.write(1, b"READY|" + bytes(range(256)) + b"|END")
            """
        ))
        assert s.wait() == 0, s.describe()
        body = s.output().split(b"READY|", 1)[1]
        sent = bytes(range(256)) + b"|END"
        assert body == sent.replace(b"\n", b"\r\n"), s.describe()

    @pytest.mark.parametrize("stdout", ["socket", "pipe"])
    def test_output_the_child_shares_loses_nothing(
        self, spawn: Spawn, stdout: str
    ) -> None:
        """Hosts built on libuv (Node) give their children socketpair stdio. In direct mode the
        child writes to that descriptor itself: O_NONBLOCK on it (the relay's wish for its own
        writes) would make the child's writes fail with EAGAIN and lose its output."""
        # 4,000,000 bytes in one write, far more than a socket or pipe holds; no newline, so
        # that copy mode's output processing leaves them alone.
        s = spawn(py(
            """
            import fcntl, os, sys, termios
            attrs = termios.tcgetattr(0)
            attrs[3] &= ~termios.ECHO  # the "go" typed below must not land in the stream
            termios.tcsetattr(0, termios.TCSANOW, attrs)
            os.write(1, b"READY %d\\n" % os.getpid())
            os.read(0, 10)  # the relay is running: whatever it does to fd 1 is done
            nonblocking = fcntl.fcntl(1, fcntl.F_GETFL) & os.O_NONBLOCK
            view = memoryview(b"0123456789abcdef" * 250000)
            while view:
                view = view[os.write(1, view):]
            os.write(1, b"END nonblocking=%d\\n" % bool(nonblocking))
            """
        ), stdout=stdout)
        at = s.expect(b"READY ")
        start = s.expect(b"\n", start=at)
        child = int(s.output()[at:start])
        s.reading.clear()  # nobody reads the output: the child's writes must wait, not fail
        s.send(b"go\r")
        assert wait_until(lambda: proc_state(child) in ("S", "Z", None)), s.describe()
        s.reading.set()
        s.expect(b"END", timeout=60)
        assert s.wait() == 0, s.describe()
        body, _, end = s.output()[start:].partition(b"END")
        assert len(body) == 4_000_000, f"{len(body)} of 4000000 bytes arrived\n{s.describe()}"
        assert body == b"0123456789abcdef" * 250000
        assert end.startswith(b" nonblocking=0"), s.describe()
        assert_restored(s)

    @pytest.mark.parametrize("mode", ["direct"])
    def test_stopping_the_relay_stops_a_direct_child(
        self, spawn: Spawn, tmp_path: Path
    ) -> None:
        """Only in direct mode: a stopped copying relay holds the child's output back by itself,
        but a child that writes to the terminal directly must stop with it, or it would write
        over the user's shell."""
        pidfile, gate = tmp_path / "pid", tmp_path / "gate"
        s = spawn(sh(
            f"echo $$ > {pidfile}; echo READY; "
            f"while [ ! -e {gate} ]; do echo tick; sleep 0.02; done"
        ), jobshell=True)
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        child, relay = read_ints(pidfile)[0], s.relay_pid
        for _ in range(2):
            os.kill(relay, signal.SIGTSTP)
            assert wait_until(lambda: proc_state(relay) == "T", 10), s.describe()
            assert wait_until(lambda: stopped(child), 10), (
                f"the child runs on while the relay is stopped\n{s.describe()}"
            )
            assert_restored(s)
            s.settle()
            stopped_at = s.output_len()
            time.sleep(0.3)
            assert s.output_len() == stopped_at, "output reached the terminal while stopped"
            os.kill(relay, signal.SIGCONT)
            assert wait_until(lambda: proc_state(child) not in ("T", None), 10), s.describe()
            assert s.terminal.wait_raw(), s.describe()
            assert s.wait_output_len(stopped_at + 5), "no output after SIGCONT"
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert_restored(s)


# --------------------------------------------------------------------------- signals at the edges

# Starts the rest of its arguments with the signals named in the first (numbers, comma
# separated) blocked, as a parent's mask is inherited across exec.
BLOCKED_START = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {int(n) for n in sys.argv[1].split(",")})
os.execv(sys.argv[2], sys.argv[2:])
"""

# Raises SIGWINCH just before a sigaction() that puts SIGWINCH's default action back: a
# window change landing while the relay restores the handlers it took over.
SIGACTION_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    static int (*real)(int, const struct sigaction *, struct sigaction *);
    if (!real)
        real = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT,
                                                                                 "sigaction");
    if (sig == SIGWINCH && act && !(act->sa_flags & SA_SIGINFO) && act->sa_handler == SIG_DFL)
        raise(SIGWINCH);
    return real(sig, act, old);
}
"""


def build_shim(tmp: Path, source: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler: the test builds a small shim (needed for the build too)")
    src = tmp / "shim.c"
    src.write_text(source)
    lib = src.with_suffix(".so")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
    return lib


@pytest.fixture(scope="module")
def sigaction_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("sigaction-shim"), SIGACTION_SHIM)


def blocked_start(signals: list[int], mode: str, *command: str) -> list[str]:
    """argv of a relay started with ``signals`` blocked, running ``command``."""
    return [PY, "-c", BLOCKED_START, ",".join(map(str, signals)),
            *RELAY_ARGV, *output_args(mode), "--", *command]


class TestSignalEdges:
    def test_a_resize_while_the_handlers_are_put_back_prints_nothing(
        self, spawn: Spawn, mode: str, sigaction_shim: Path
    ) -> None:
        # CPython takes a signal that its C handler caught after the Python handler became
        # SIG_DFL for a race it reports: "Exception ignored ... OSError: Signal 28 ignored due
        # to race condition", printed on the user's terminal as the session ends.
        s = spawn(argv=[*RELAY_ARGV, *output_args(mode), "--", "sh", "-c", "echo RAN"],
                  extra_env={"LD_PRELOAD": str(sigaction_shim)})
        assert s.wait() == 0, s.describe()
        assert s.text().strip() == "RAN", s.describe()
        assert_restored(s)

    def test_started_with_sigchld_blocked_it_sees_its_child_exit(
        self, spawn: Spawn, mode: str
    ) -> None:
        s = spawn(argv=blocked_start([signal.SIGCHLD], mode,
                                     "sh", "-c", "grep SigBlk /proc/self/status; exit 3"))
        assert s.wait() == 3, s.describe()
        # The child gets the mask a shell gives its commands: nothing blocked.
        assert re.search(r"SigBlk:\s*0{16}\n", s.text()), s.describe()
        assert_restored(s)

    def test_started_with_sigchld_blocked_sigterm_ends_it(
        self, spawn: Spawn, mode: str, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pid"
        s = spawn(argv=blocked_start([signal.SIGCHLD], mode,
                                     "sh", "-c", f"echo $$ > {pidfile}; echo READY; exec sleep 60"))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        os.kill(s.relay_pid, signal.SIGTERM)
        assert s.wait() == 128 + signal.SIGTERM, s.describe()
        assert_restored(s)
        assert_no_leftovers(s)

    def test_started_with_sigwinch_blocked_it_forwards_resizes(
        self, spawn: Spawn, mode: str, tmp_path: Path
    ) -> None:
        report, gate = tmp_path / "sizes", tmp_path / "gate"
        s = spawn(argv=blocked_start([signal.SIGWINCH], mode, *py(WINCH_CHILD, report, gate)),
                  rows=30, cols=90)
        s.expect(b"READY")
        s.terminal.resize(41, 123)
        assert wait_until(lambda: last_size(report) == (41, 123)), (
            f"the child saw {reported_sizes(report)}\n{s.describe()}"
        )
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert_restored(s)


# --------------------------------------------------------------------------- found in review

# A raw-mode echo that ends on "q".
RAW_ECHO_CHILD = """
import os, tty
tty.setraw(0)
os.write(1, b"READY\\n")
while True:
    data = os.read(0, 100)
    os.write(1, data)
    if not data or b"q" in data:
        break
"""


class TestReview:
    # The relay runs from its own command line (no output option): one mode, not one per `mode`.
    @pytest.mark.parametrize("mode", ["copy"])
    def test_sigpipe_at_default_in_the_host_is_only_the_end_of_output(
        self, spawn: Spawn
    ) -> None:
        # A host CLI that puts SIGPIPE back to its default, whose output reader is gone.
        host = """
            import os, signal, sys
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            import bottle.relay as relay
            r, w = os.pipe()
            os.close(r)
            status = relay.run(["sh", "-c", "echo into-the-void; sleep 30"], stdout_fd=w)
            os.write(2, b"STATUS %d\\\\n" % status)
            """
        s = spawn(argv=py(host))
        rc = s.wait()
        assert rc == 0, f"the host died (status {rc})\n{s.describe()}"
        assert f"STATUS {128 + signal.SIGHUP}" in s.text(), s.describe()  # child ended
        assert_restored(s)
        assert_no_leftovers(s)

    def test_tstp_in_an_orphaned_group_does_not_stop_the_relay_for_good(
        self, spawn: Spawn
    ) -> None:
        # Without a job shell the relay leads its own session: its process group is orphaned,
        # where the kernel discards a stop from SIGTSTP (nobody could continue it).
        s = spawn(py(RAW_ECHO_CHILD))
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        os.kill(s.relay_pid, signal.SIGTSTP)
        s.send(b"ping")
        s.expect(b"ping", timeout=10)
        assert proc_state(s.relay_pid) != "T", s.describe()
        assert s.terminal.wait_raw(), "the terminal was not set up again"
        assert raw_violations(s.terminal.attrs(), s.mode, s.terminal.saved) == []
        s.send(b"q")
        assert s.wait() == 0, s.describe()
        assert_restored(s)

    def test_terminal_given_back_when_the_child_lets_go_of_its_pty(self, spawn: Spawn) -> None:
        s = spawn(sh("echo READY; exec sleep 30 </dev/null >/dev/null 2>&1"))
        s.expect(b"READY")
        assert wait_until(lambda: s.terminal.attrs() == s.terminal.saved), (
            f"the terminal stayed raw after the child closed its pty\n{s.describe()}"
        )
        s.send(b"\x03")  # Ctrl-C on a cooked terminal: SIGINT, forwarded to the child
        assert s.wait(10) == 128 + signal.SIGINT, s.describe()
        assert_restored(s)
        assert_no_leftovers(s)

    # The relay runs from its own command line (no output option): one mode, not one per `mode`.
    @pytest.mark.parametrize("mode", ["copy"])
    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["INT", "HUP"])
    def test_signal_ignored_on_entry_stays_ignored(self, spawn: Spawn, sig: int) -> None:
        child = """
            import os, signal, sys
            def got(signum, frame):
                os.write(1, b"GOT-%d\\\\n" % signum)
            signal.signal(signal.SIGINT, got)
            signal.signal(signal.SIGHUP, got)
            os.write(1, b"READY\\\\n")
            sys.stdin.readline()
            os.write(1, b"LINE\\\\n")
            sys.stdin.readline()
            """
        # As under `trap '' INT` or `nohup`: the relay starts with the signal ignored.
        s = spawn(argv=["sh", "-c", f"trap '' {signal.Signals(sig).name[3:]}; exec \"$@\"",
                        "sh", *RELAY_ARGV, "--", *py(child)])
        s.expect(b"READY")
        assert s.terminal.wait_raw(), s.describe()
        os.kill(s.relay_pid, sig)
        s.send(b"x\r")  # reaches the child after a forwarded signal would have
        s.expect(b"LINE")
        assert b"GOT-" not in s.output(), f"an ignored signal was forwarded\n{s.describe()}"
        # The terminal's own hang-up is still seen on the terminal, and still ends the child.
        s.terminal.close_master()
        s.wait(10)
        assert_no_leftovers(s)

    # The relay runs from its own command line (no output option): one mode, not one per `mode`.
    @pytest.mark.parametrize("mode", ["copy"])
    @pytest.mark.parametrize("front", ["module", "bottle-relay"])
    def test_ctrl_c_during_start_up_exits_130_quietly(self, spawn: Spawn, front: str) -> None:
        # strace delivers SIGINT at the relay's first pipe2(), before its handlers exist.
        if shutil.which("strace") is None:
            pytest.fail("strace is missing: the test delivers the signal with it")
        relay = list(RELAY_ARGV) if front == "module" else [
            PY, "-c", "import sys; from bottle.cli import main; sys.exit(main())", "relay"]
        s = spawn(argv=["strace", "-qq", "-o", "/dev/null", "-e", "trace=pipe2",
                        "-e", "inject=pipe2:signal=SIGINT:when=1",
                        *relay, "--", *sh("echo SHOULD-NOT-RUN; sleep 30")])
        rc = s.wait()
        assert rc == 130, f"status {rc}\n{s.describe()}"
        assert "Traceback" not in s.text() and "KeyboardInterrupt" not in s.text(), s.describe()
        assert_restored(s)
        assert_no_leftovers(s)


# Makes TIOCSWINSZ fail with ENOTTY after the first FAIL_TIOCSWINSZ_AFTER calls, for the
# relay (Python's fcntl.ioctl and the native core alike call libc's ioctl).
IOCTL_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/ioctl.h>

int ioctl(int fd, unsigned long request, ...) {
    static int (*real)(int, unsigned long, ...);
    static int calls;
    const char *after = getenv("FAIL_TIOCSWINSZ_AFTER");
    va_list ap;
    void *arg;
    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (!real)
        real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    if (request == TIOCSWINSZ && after && calls++ >= atoi(after)) {
        errno = ENOTTY;
        return -1;
    }
    return real(fd, request, arg);
}
"""


@pytest.fixture(scope="module")
def ioctl_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"), IOCTL_SHIM)


class TestRefusedWindowSize:
    WARNING = b"refused the window size"

    def test_refused_at_start_the_session_runs(self, spawn: Spawn, ioctl_shim: Path) -> None:
        s = spawn(sh("echo RAN; exit 7"),
                  extra_env={"LD_PRELOAD": str(ioctl_shim), "FAIL_TIOCSWINSZ_AFTER": "0"})
        assert s.wait() == 7, s.describe()
        assert b"RAN" in s.output(), s.describe()
        assert s.output().count(self.WARNING) == 1, s.describe()
        assert_restored(s)

    def test_refused_later_logged_once(
        self, spawn: Spawn, tmp_path: Path, ioctl_shim: Path
    ) -> None:
        report, gate = tmp_path / "sizes", tmp_path / "gate"
        s = spawn(py(WINCH_CHILD, report, gate), rows=30, cols=90,
                  extra_env={"LD_PRELOAD": str(ioctl_shim), "FAIL_TIOCSWINSZ_AFTER": "1"})
        s.expect(b"READY")
        s.terminal.resize(40, 100)
        s.expect(self.WARNING)
        s.terminal.resize(50, 120)
        s.send(b"after\r")  # still relaying: the child's pty echoes it back
        s.expect(b"after")
        gate.touch()
        assert s.wait() == 0, s.describe()
        assert s.output().count(self.WARNING) == 1, s.describe()
        assert reported_sizes(report)[0] == (30, 90)
