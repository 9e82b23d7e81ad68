"""Measure the PTY relay side by side with its peers and with no relay at all.

Every relay under test runs on an outer pseudo-terminal that this module owns (raw mode, made the
relay's controlling terminal), exactly as a user's terminal would host it. The measurement code
lives here so that ``bottle bench`` and the pytest-benchmark suites in ``benchmarks/`` share it.

Relay CPU is the relay process's *own* CPU time, read from ``/proc/<pid>/task/*/schedstat``
(nanoseconds) while the relay sleeps, and once more while it is a zombie (``waitid`` with
``WNOWAIT`` keeps it unreaped). ``wait4``'s rusage is not used for it: Linux fills it with
``RUSAGE_BOTH``, the process's own time *plus* every child it reaped, so for ``script`` it
would include the producer (``cat``) too. That figure is kept in the JSON as ``wait4_cpu_s`` to
show the difference.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
import tty
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
TAG_VAR = "BOTTLE_BENCH_TAG"
OUTER_SIZE = (40, 120)

RELAY_NAMES = ("native", "direct", "pure", "script", "pty.spawn", "none")

PTY_SPAWN_RUNNER = (
    "import os, pty, sys\n"
    "code = os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:]))\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)

# The resize child blocks SIGWINCH and takes it with sigwait(), so its reaction is one syscall,
# the same for every relay; it reports the size its own terminal has, "rows,cols;".
RESIZE_CHILD = (
    "import fcntl, os, signal, struct, termios, tty\n"
    "tty.setraw(0)\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})\n"
    "os.write(1, b'R')\n"
    "while True:\n"
    "    signal.sigwait({signal.SIGWINCH})\n"
    "    r, c = struct.unpack('HHHH', fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]\n"
    "    os.write(1, b'%d,%d;' % (r, c))\n"
)


class BenchError(RuntimeError):
    """A relay misbehaved during a measurement (lost bytes, hung, failed to start)."""


# --------------------------------------------------------------------------------------------
# Relays


@dataclass(frozen=True)
class Relay:
    """One way of putting a child on a terminal: a relay, a peer, or none at all."""

    name: str
    description: str
    env: tuple[tuple[str, str], ...] = ()
    # For bottle's own relay: which implementation must run, and the options it gets.
    implementation: str | None = None
    options: tuple[str, ...] = ()

    def argv(self, child: Sequence[str]) -> list[str]:
        """Return the argv that runs ``child`` through this relay."""
        if self.implementation is not None:
            return [sys.executable, "-m", "bottle.relay", *self.options, "--", *child]
        if self.name == "script":
            # script hands its command to $SHELL -c; exec keeps the same process tree depth.
            return ["script", "-q", "-e", "-f", "-c", "exec " + shlex.join(child), "/dev/null"]
        if self.name == "pty.spawn":
            return [sys.executable, "-c", PTY_SPAWN_RUNNER, *child]
        return list(child)

    @property
    def is_relay(self) -> bool:
        """Whether a relay process sits between the child and the outer terminal."""
        return self.name != "none"


_NATIVE_ENV = (("BOTTLE_REQUIRE_EXTENSION", "1"),)

RELAYS: dict[str, Relay] = {
    "native": Relay("native", "bottle relay, native loop (copy mode)", _NATIVE_ENV, "native"),
    "direct": Relay(
        "direct", "bottle relay, native loop, --output direct", _NATIVE_ENV, "native",
        ("--output", "direct"),
    ),
    "pure": Relay(
        "pure", "bottle relay, pure-Python twin (copy mode)", (("BOTTLE_NO_EXTENSIONS", "1"),),
        "pure",
    ),
    "script": Relay("script", "util-linux script -q -e -f -c CMD /dev/null"),
    "pty.spawn": Relay("pty.spawn", "Python's pty.spawn"),
    "none": Relay("none", "no relay: the child straight on the outer terminal"),
}


def base_env(relay: Relay) -> dict[str, str]:
    """Return the environment a relay runs with (the caller's, minus bottle's switches)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BOTTLE_NO_EXTENSIONS", "BOTTLE_REQUIRE_EXTENSION")
    }
    env["SHELL"] = "/bin/sh"
    env.update(relay.env)
    return env


def unavailable_reason(relay: Relay) -> str | None:
    """Return why ``relay`` cannot run here, or None when it can."""
    if relay.implementation is not None:
        probe = subprocess.run(
            [sys.executable, "-c", "import bottle.relay as r; print(r.IMPLEMENTATION)"],
            env=base_env(relay),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        got = probe.stdout.strip()
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            return f"bottle.relay does not import with {dict(relay.env)}: {last}"
        if got != relay.implementation:
            return f"bottle.relay runs the {got!r} implementation, not {relay.implementation!r}"
        return None
    if relay.name == "script":
        exe = shutil.which("script")
        if exe is None:
            return "script(1) is not installed (util-linux/bsdutils)"
        ver = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        if "util-linux" not in ver.stdout + ver.stderr:
            return f"{exe} is not util-linux script (needs -q -e -f -c)"
        return None
    return None


# --------------------------------------------------------------------------------------------
# Processes: /proc readings


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _stat_fields(pid: int) -> list[str]:
    # Fields after "(comm)"; comm may contain spaces or parentheses, hence rsplit.
    return _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()


def process_state(pid: int) -> str:
    """Return the one-letter scheduler state of ``pid`` ("R", "S", "Z", ...)."""
    return _stat_fields(pid)[0]


def own_cpu_ns(pid: int) -> int:
    """Return the CPU time ``pid`` itself has used, children excluded, in nanoseconds.

    Exact for a sleeping or zombie process (schedstat is brought up to date when a task leaves
    the CPU). Threads that already exited are only in the group's tick-grained stat counters;
    those win when they are larger.
    """
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            total += int(_read(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
    except FileNotFoundError:
        total = 0
    fields = _stat_fields(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    group_ns = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks
    if group_ns > total + 2 * 1_000_000_000 // ticks:
        return group_ns
    return total


def context_switches(pid: int) -> int:
    """Return voluntary + involuntary context switches of all of ``pid``'s threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def tagged_pids(tag: str) -> list[int]:
    """Return the live processes whose environment carries ``TAG_VAR=tag``."""
    needle = f"{TAG_VAR}={tag}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


# --------------------------------------------------------------------------------------------
# A session: one relay process on an outer pty


@dataclass
class ExitInfo:
    """How a relay process ended and what it cost."""

    status: int
    own_cpu_ns: int
    wait4_cpu_s: float


class Session:
    """One relay process (or the bare child) on an outer pty that the benchmark owns."""

    def __init__(
        self,
        relay: Relay,
        child: Sequence[str],
        *,
        size: tuple[int, int] = OUTER_SIZE,
    ) -> None:
        self.relay = relay
        self.tag = uuid.uuid4().hex
        self.argv = relay.argv(child)
        env = base_env(relay)
        env[TAG_VAR] = self.tag
        self.exit: ExitInfo | None = None
        self.stragglers = 0
        self._closed = False
        self._err = os.memfd_create("relay-stderr")
        master, slave = os.openpty()
        self.master = master
        try:
            tty.setraw(slave)
            set_size(master, *size)
            _posix_spawn_gives_ctty()  # the one-time probe, outside the start-up timing
            self.spawned_ns = time.perf_counter_ns()
            self.pid = _spawn_on_tty(self.argv, env, slave, self._err)
        except BaseException:
            os.close(master)
            os.close(self._err)
            raise
        finally:
            os.close(slave)
        self._poll = select.poll()
        self._poll.register(master, select.POLLIN)
        self.pidfd = os.pidfd_open(self.pid)

    # ---- I/O on the outer terminal

    def read_some(self, buf: bytearray, timeout: float) -> int:
        """Read what the relay wrote to the terminal into ``buf``; 0 at EOF."""
        if not self._poll.poll(int(timeout * 1000)):
            raise BenchError(f"{self.relay.name}: no output for {timeout:.1f} s{self.stderr()}")
        try:
            return os.readv(self.master, [buf])
        except OSError as e:
            if e.errno == errno.EIO:  # Linux: every slave holder has gone.
                return 0
            raise

    def expect(self, marker: bytes, timeout: float = 30.0) -> bytes:
        """Read until ``marker`` arrives; return what followed it."""
        got = bytearray()
        buf = bytearray(65536)
        deadline = time.monotonic() + timeout
        while marker not in got:
            n = self.read_some(buf, max(0.0, deadline - time.monotonic()))
            if n == 0:
                raise BenchError(
                    f"{self.relay.name}: terminal closed before {marker!r}; got {bytes(got)!r}"
                    f"{self.stderr()}"
                )
            got += buf[:n]
        return bytes(got[got.index(marker) + len(marker) :])

    def write(self, data: bytes) -> None:
        """Type ``data`` on the outer terminal."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def stderr(self) -> str:
        """Return the relay's own stderr so far, as a suffix for error messages."""
        text = os.pread(self._err, 4096, 0).decode(errors="replace").strip()
        return f"\n{self.relay.name} stderr: {text}" if text else ""

    # ---- the relay process

    def settled_cpu_ns(self, timeout: float = 2.0) -> int:
        """Return the relay's own CPU once it has gone back to sleep."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            cpu = own_cpu_ns(self.pid)
            if cpu == last and process_state(self.pid) in ("S", "D"):
                return cpu
            if time.monotonic() > deadline:
                return cpu
            last = cpu
            time.sleep(0.002)

    def wait_exit(self, timeout: float = 30.0) -> ExitInfo:
        """Wait for the relay to exit, draining the terminal meanwhile; reap it."""
        if self.exit is not None:
            return self.exit
        poll = select.poll()
        poll.register(self.pidfd, select.POLLIN)
        if self.master >= 0:
            poll.register(self.master, select.POLLIN)
        buf = bytearray(65536)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.relay.name}: did not exit within {timeout:.0f} s")
            events = dict(poll.poll(int(left * 1000)))
            if self.pidfd in events:
                break
            if events.get(self.master, 0) & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    n = os.readv(self.master, [buf])
                except OSError:
                    n = 0
                if n == 0:
                    poll.unregister(self.master)
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        cpu = own_cpu_ns(self.pid)
        _, status, ru = os.wait4(self.pid, 0)
        self.exit = ExitInfo(
            os.waitstatus_to_exitcode(status), cpu, ru.ru_utime + ru.ru_stime
        )
        return self.exit

    def close(self) -> None:
        """End the child, then the relay; make sure nothing the session started is left."""
        if self._closed:
            return
        self._closed = True
        if self.exit is None:
            # End the child so that every relay takes its ordinary way out. A hang-up would not
            # do: util-linux script keeps running, with its child, after its terminal is gone.
            for pid in tagged_pids(self.tag):
                if pid != self.pid or not self.relay.is_relay:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            try:
                self.wait_exit(timeout=5.0)
            except BenchError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.wait_exit(timeout=5.0)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        deadline = time.monotonic() + 0.5
        left = tagged_pids(self.tag)
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = tagged_pids(self.tag)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stragglers = len(left)
        os.close(self.pidfd)
        os.close(self._err)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal behind ``fd``."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _posix_spawn_on_tty(
    argv: Sequence[str], env: Mapping[str, str], tty_fd: int, err_fd: int
) -> int:
    return os.posix_spawnp(
        argv[0],
        list(argv),
        dict(env),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.ttyname(tty_fd), os.O_RDWR, 0),
            (os.POSIX_SPAWN_DUP2, 0, 1),
            (os.POSIX_SPAWN_DUP2, err_fd, 2),
        ],
        setsid=True,
    )


_POSIX_SPAWN_GIVES_CTTY: bool | None = None


def _posix_spawn_gives_ctty() -> bool:
    """Check once that posix_spawn's setsid() comes before its file actions, as in glibc."""
    global _POSIX_SPAWN_GIVES_CTTY
    if _POSIX_SPAWN_GIVES_CTTY is None:
        master, slave = os.openpty()
        try:
            pid = _posix_spawn_on_tty(["sleep", "60"], os.environ, slave, slave)
            try:
                _POSIX_SPAWN_GIVES_CTTY = int(_stat_fields(pid)[4]) == os.fstat(slave).st_rdev
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        finally:
            os.close(slave)
            os.close(master)
    return _POSIX_SPAWN_GIVES_CTTY


def _spawn_on_tty(argv: Sequence[str], env: Mapping[str, str], tty_fd: int, err_fd: int) -> int:
    """Start ``argv`` in a new session with the terminal ``tty_fd`` as controlling terminal.

    posix_spawn is vfork-fast however large this process is (pytest's is not small), and
    glibc's calls setsid() before the file actions, so opening the terminal by name there
    makes it the controlling terminal. Elsewhere: fork, setsid, TIOCSCTTY.
    """
    if _posix_spawn_gives_ctty():
        return _posix_spawn_on_tty(argv, env, tty_fd, err_fd)
    return _fork_on_tty(argv, env, tty_fd, err_fd)


def _fork_on_tty(argv: Sequence[str], env: Mapping[str, str], tty_fd: int, err_fd: int) -> int:
    rd, wr = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child side
        try:
            os.close(rd)
            os.setsid()
            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
            os.dup2(tty_fd, 0)
            os.dup2(tty_fd, 1)
            os.dup2(err_fd, 2)
            os.execvpe(argv[0], list(argv), dict(env))
        except OSError as e:
            os.write(wr, str(e.errno).encode())
        finally:
            os._exit(127)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        report = f.read()
    if report:
        os.waitpid(pid, 0)
        err = int(report)
        raise OSError(err, os.strerror(err), argv[0])
    return pid


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    """Sizes and counts of one run; presets below."""

    stream_bytes: int
    echo_trips: int
    resize_trips: int
    resize_burst: int
    idle_seconds: float
    startup_spawns: int
    many_sessions: int
    many_bytes: int
    runs: int
    stream_blocks: int = 8  # throughput takes turns between the relays in this many blocks


FULL = Settings(64 * MIB, 5000, 1000, 300, 3.0, 20, 16, 8 * MIB, 3, 8)
QUICK = Settings(16 * MIB, 1000, 200, 300, 1.0, 5, 16, 1 * MIB, 1, 4)
SMOKE = Settings(1 * MIB, 50, 20, 50, 0.3, 1, 16, 128 * 1024, 1, 2)


# --------------------------------------------------------------------------------------------
# Payloads


@dataclass(frozen=True)
class Payload:
    """A file of random bytes the producer child cats, with its digest."""

    path: str
    size: int
    sha256: str


class Payloads:
    """Random payload files in a scratch directory (tmpfs when there is one)."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._dir = tempfile.TemporaryDirectory(prefix="bottle-bench-", dir=base)
        self._files: dict[int, Payload] = {}

    def get(self, size: int) -> Payload:
        """Return a payload of exactly ``size`` random bytes."""
        if size not in self._files:
            path = os.path.join(self._dir.name, f"payload-{size}")
            digest = hashlib.sha256()
            with open(path, "wb") as f:
                left = size
                while left:
                    chunk = os.urandom(min(left, MIB))
                    f.write(chunk)
                    digest.update(chunk)
                    left -= len(chunk)
            self._files[size] = Payload(path, size, digest.hexdigest())
        return self._files[size]

    def close(self) -> None:
        """Delete the payload files."""
        self._dir.cleanup()

    def __enter__(self) -> Payloads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Throughput


def stream_child(payload: Payload, blocks: int = 1) -> list[str]:
    """Return the producer: raw mode, "R"; per block, wait for a byte and send the block; then
    wait for a byte. One block is the whole payload, by ``cat``."""
    if blocks == 1:
        script = (
            'stty raw -echo && printf R && head -c1 >/dev/null && cat "$0" && head -c1 >/dev/null'
        )
        return ["/bin/sh", "-c", script, payload.path]
    if payload.size % blocks:
        raise ValueError(f"{payload.size} bytes do not split into {blocks} blocks")
    # head -c reads a regular file exactly as far as it copies: fd 3 moves on block by block.
    script = (
        'stty raw -echo && printf R && exec 3<"$0" && i=0 && while [ "$i" -lt "$1" ]; do '
        'head -c1 >/dev/null && head -c "$2" <&3; i=$((i + 1)); done; head -c1 >/dev/null'
    )
    return ["/bin/sh", "-c", script, payload.path, str(blocks), str(payload.size // blocks)]


@dataclass
class ThroughputResult:
    """One payload streamed through one relay."""

    relay: str
    bytes: int
    seconds: float
    mib_s: float
    cpu_s: float | None
    cpu_s_per_gib: float | None
    startup_cpu_s: float | None
    life_cpu_s: float | None
    wait4_cpu_s: float | None


class Stream:
    """A payload streamed from a child through a relay: ready(), transfer(), finish().

    With ``blocks`` > 1 the payload comes in that many equal blocks, one per transfer().
    """

    def __init__(self, relay: Relay, payload: Payload, blocks: int = 1) -> None:
        self.relay = relay
        self.payload = payload
        self.blocks = blocks
        self.session = Session(relay, stream_child(payload, blocks))
        self.cpu0 = 0
        self.seconds = 0.0
        self.got = 0
        self.digest = hashlib.sha256()
        self.result: ThroughputResult | None = None

    def ready(self) -> None:
        """Wait until the child is ready and the relay asleep; note the relay's CPU."""
        rest = self.session.expect(b"R")
        if rest:
            raise BenchError(f"{self.relay.name}: unexpected output before the payload: {rest!r}")
        if self.relay.is_relay:
            self.cpu0 = self.session.settled_cpu_ns()

    def go(self) -> None:
        """Let the child start streaming."""
        self.session.write(b"g")
        self._t0 = time.perf_counter_ns()

    def transfer(self) -> None:
        """Stream the payload (or its next block); check it arrived intact after the last."""
        self.go()
        digest = self.digest
        got, end = self.got, self.got + self.payload.size // self.blocks
        buf = bytearray(65536)
        view = memoryview(buf)
        while got < end:
            n = self.session.read_some(buf, 30.0)
            if n == 0:
                break
            take = min(n, end - got)
            digest.update(view[:take])
            got += take
        self.seconds += (time.perf_counter_ns() - self._t0) / 1e9
        self.got = got
        if got < end or got == self.payload.size:
            self.check(got, digest)

    def check(self, got: int, digest: Any) -> None:
        """Raise BenchError unless exactly the payload arrived."""
        if got != self.payload.size or digest.hexdigest() != self.payload.sha256:
            raise BenchError(
                f"{self.relay.name}: payload corrupted: {got} of {self.payload.size} bytes, "
                f"sha256 {'matches' if digest.hexdigest() == self.payload.sha256 else 'differs'}"
                f"{self.session.stderr()}"
            )

    def finish(self) -> ThroughputResult:
        """Note the relay's CPU, let the child exit, reap the relay; return the result."""
        if self.result is not None:
            return self.result
        try:
            cpu1 = self.session.settled_cpu_ns() if self.relay.is_relay else 0
            self.session.write(b"q")
            info = self.session.wait_exit()
            if info.status != 0:
                raise BenchError(
                    f"{self.relay.name}: exit status {info.status}{self.session.stderr()}"
                )
        finally:
            self.session.close()
        size = self.payload.size
        cpu = (cpu1 - self.cpu0) / 1e9 if self.relay.is_relay else None
        self.result = ThroughputResult(
            relay=self.relay.name,
            bytes=size,
            seconds=self.seconds,
            mib_s=size / MIB / self.seconds if self.seconds else 0.0,
            cpu_s=cpu,
            cpu_s_per_gib=cpu * GIB / size if cpu is not None else None,
            startup_cpu_s=self.cpu0 / 1e9 if self.relay.is_relay else None,
            life_cpu_s=info.own_cpu_ns / 1e9 if self.relay.is_relay else None,
            wait4_cpu_s=info.wait4_cpu_s if self.relay.is_relay else None,
        )
        return self.result

    def abort(self) -> None:
        """Tear the session down after a failure."""
        self.session.close()


def measure_throughput(relay: Relay, payload: Payload) -> ThroughputResult:
    """Stream ``payload`` from a raw-mode child through ``relay`` to the outer terminal."""
    stream = Stream(relay, payload)
    try:
        stream.ready()
        stream.transfer()
        return stream.finish()
    finally:
        stream.abort()


def measure_throughput_interleaved(
    relays: Sequence[Relay], payload: Payload, blocks: int = 8
) -> dict[str, ThroughputResult]:
    """Stream ``payload`` through several relays at once, taking turns block by block.

    Every relay's child is ready before the first byte moves; the blocks go to each in turn
    (order reversed every other block), like echo and resize, so that a burst of other work
    lands on all of them alike. Relays between their turns sleep and cost nothing.
    """
    streams: list[Stream] = []
    try:
        for relay in relays:
            streams.append(Stream(relay, payload, blocks))
        for st in streams:
            st.ready()
        for b in range(blocks):
            for st in streams if b % 2 == 0 else streams[::-1]:
                st.transfer()
        return {st.relay.name: st.finish() for st in streams}
    finally:
        for st in streams:
            st.abort()


# --------------------------------------------------------------------------------------------
# Echo latency


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-quantile (0..1) of ``values``, nearest-rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class LatencyResult:
    """Round trips through one relay."""

    relay: str
    trips: int
    p50_us: float
    p99_us: float
    cpu_us_per_trip: float | None
    samples_us: list[float] = field(repr=False, default_factory=list)


ECHO_CHILD = ["/bin/sh", "-c", "stty raw -echo && printf R && exec cat"]


def measure_echo(relay: Relay, trips: int, warmup: int = 100) -> LatencyResult:
    """Time 1-byte round trips through ``relay`` to a child that echoes."""
    return measure_echo_interleaved([relay], trips, warmup)[relay.name]


def measure_echo_interleaved(
    relays: Sequence[Relay], trips: int, warmup: int = 100, block: int = 100
) -> dict[str, LatencyResult]:
    """Time 1-byte round trips through several relays at once, in alternating blocks.

    Every relay's session is open for the whole measurement and the trips go to each in turn,
    ``block`` at a time (order reversed every other block), so that a burst of other work on
    the machine lands on all of them alike and their ratios hold still.
    """
    sessions: list[Session] = []
    try:
        for relay in relays:
            sessions.append(Session(relay, ECHO_CHILD))
        cpu0: dict[str, int] = {}
        for s in sessions:
            if s.expect(b"R"):
                raise BenchError(f"{s.relay.name}: unexpected output after the ready mark")
        buf = bytearray(64)
        clock = time.perf_counter_ns
        samples: dict[str, list[float]] = {s.relay.name: [] for s in sessions}

        def trip_block(s: Session, count: int, keep: bool) -> None:
            fd, name = s.master, s.relay.name
            for i in range(count):
                byte = bytes((97 + i % 26,))
                t0 = clock()
                os.write(fd, byte)
                n = s.read_some(buf, 5.0)
                t1 = clock()
                if buf[:n] != byte:
                    raise BenchError(f"{name}: echo of {byte!r} came back as {bytes(buf[:n])!r}")
                if keep:
                    samples[name].append((t1 - t0) / 1000)

        for s in sessions:
            cpu0[s.relay.name] = s.settled_cpu_ns() if s.relay.is_relay else 0
            trip_block(s, warmup, keep=False)
        done = 0
        while done < trips:
            count = min(block, trips - done)
            for s in sessions if (done // block) % 2 == 0 else sessions[::-1]:
                trip_block(s, count, keep=True)
            done += count
        results = {}
        for s in sessions:
            name = s.relay.name
            cpu = (
                (s.settled_cpu_ns() - cpu0[name]) / 1000 / (warmup + trips)
                if s.relay.is_relay
                else None
            )
            v = samples[name]
            results[name] = LatencyResult(
                name, trips, percentile(v, 0.5), percentile(v, 0.99), cpu, v
            )
        return results
    finally:
        for s in sessions:
            s.close()


# --------------------------------------------------------------------------------------------
# Resize latency


@dataclass
class ResizeResult:
    """Window changes through one relay."""

    relay: str
    forwarded: bool
    trips: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    burst: int = 0
    burst_ok: bool = False
    burst_settle_ms: float = 0.0
    burst_reports: int = 0
    samples_us: list[float] = field(repr=False, default_factory=list)


class _SizeReader:
    """Parses the resize child's "rows,cols;" reports from the outer terminal."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending = b""
        self.buf = bytearray(4096)

    def next(self, timeout: float) -> tuple[int, int] | None:
        deadline = time.monotonic() + timeout
        while b";" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                n = self.session.read_some(self.buf, left)
            except BenchError:
                return None
            if n == 0:
                raise BenchError(f"{self.session.relay.name}: terminal closed during resizes")
            self.pending += self.buf[:n]
        report, self.pending = self.pending.split(b";", 1)
        rows, cols = report.split(b",")
        return int(rows), int(cols)


def measure_resize(
    relay: Relay, trips: int, burst: int, first_timeout: float = 1.0
) -> ResizeResult:
    """Time TIOCSWINSZ on the outer terminal until the child reports the new size."""
    return measure_resize_interleaved([relay], trips, burst, first_timeout)[relay.name]


RESIZE_BURST_LAST = (77, 177)


def measure_resize_interleaved(
    relays: Sequence[Relay],
    trips: int,
    burst: int,
    first_timeout: float = 1.0,
    block: int = 50,
) -> dict[str, ResizeResult]:
    """Window changes through several relays at once, in alternating blocks of ``block``.

    A relay whose child does not see the first change within ``first_timeout`` does not
    forward window changes (``forwarded=False``) and leaves the rotation. Then each relay gets
    a burst of ``burst`` changes back to back that must end on the last size.
    """
    child = [sys.executable, "-S", "-c", RESIZE_CHILD]
    sessions: list[Session] = []
    try:
        for relay in relays:
            sessions.append(Session(relay, child))
        readers: dict[str, _SizeReader] = {}
        for s in sessions:
            if s.expect(b"R", timeout=60.0):
                raise BenchError(f"{s.relay.name}: unexpected output after the ready mark")
            # A relay may pass the initial size on at start; let that report arrive, drop it.
            readers[s.relay.name] = reader = _SizeReader(s)
            while reader.next(0.2) is not None:
                pass
        samples: dict[str, list[float]] = {s.relay.name: [] for s in sessions}
        live = list(sessions)
        clock = time.perf_counter_ns
        done = 0
        while done < trips and live:
            count = min(block, trips - done)
            for s in list(live if (done // block) % 2 == 0 else live[::-1]):
                name, reader = s.relay.name, readers[s.relay.name]
                for i in range(done, done + count):
                    want = (30 + i % 20, 100 + i % 50)
                    t0 = clock()
                    set_size(s.master, *want)
                    while True:
                        seen = reader.next(first_timeout if i == 0 else 5.0)
                        if seen is None and i == 0:
                            live.remove(s)
                            break
                        if seen is None:
                            raise BenchError(f"{name}: the child never saw size {want}")
                        if seen == want:
                            samples[name].append((clock() - t0) / 1000)
                            break
                    if s not in live:
                        break
            done += count
        results = {s.relay.name: ResizeResult(s.relay.name, forwarded=False) for s in sessions}
        for s in live:
            name, reader = s.relay.name, readers[s.relay.name]
            # Burst: hundreds of changes back to back; the child must end on the last one.
            sizes = [(20 + i % 30, 80 + i % 60) for i in range(burst - 1)] + [RESIZE_BURST_LAST]
            for size in sizes:
                set_size(s.master, *size)
            t_last = clock()
            reports, last, settle = 0, None, 0.0
            while True:
                seen = reader.next(0.5 if last == sizes[-1] else 5.0)
                if seen is None:
                    break
                reports += 1
                last = seen
                if seen == sizes[-1] and not settle:
                    settle = (clock() - t_last) / 1e6
            v = samples[name]
            results[name] = ResizeResult(
                name,
                forwarded=True,
                trips=len(v),
                p50_us=percentile(v, 0.5),
                p99_us=percentile(v, 0.99),
                burst=burst,
                burst_ok=last == sizes[-1],
                burst_settle_ms=settle,
                burst_reports=reports,
                samples_us=v,
            )
        return results
    finally:
        for s in sessions:
            s.close()


# --------------------------------------------------------------------------------------------
# Idle


@dataclass
class IdleResult:
    """A relay whose child sleeps."""

    relay: str
    seconds: float
    wakeups_s: float
    cpu_ms_s: float


IDLE_CHILD = ["/bin/sh", "-c", "stty raw -echo && printf R && exec sleep 3600"]


def measure_idle(relay: Relay, seconds: float) -> IdleResult:
    """Count the relay's context switches and CPU while its child sleeps."""
    if not relay.is_relay:
        return IdleResult(relay.name, seconds, 0.0, 0.0)
    with Session(relay, IDLE_CHILD) as s:
        s.expect(b"R")
        s.settled_cpu_ns()
        time.sleep(0.2)
        cpu0, sw0, t0 = own_cpu_ns(s.pid), context_switches(s.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, sw1, t1 = own_cpu_ns(s.pid), context_switches(s.pid), time.monotonic()
    return IdleResult(relay.name, t1 - t0, (sw1 - sw0) / (t1 - t0), (cpu1 - cpu0) / 1e6 / (t1 - t0))


# --------------------------------------------------------------------------------------------
# Start-up


@dataclass
class StartupResult:
    """Spawn to the child's first byte on the outer terminal."""

    relay: str
    spawns: int
    p50_ms: float
    max_ms: float
    cpu_ms: float | None
    samples_ms: list[float] = field(repr=False, default_factory=list)


def spawn_first_byte(relay: Relay) -> tuple[Session, float]:
    """Spawn ``printf R`` through ``relay``; return the session and ms until the "R" arrived."""
    s = Session(relay, ["printf", "R"])
    try:
        buf = bytearray(16)
        n = s.read_some(buf, 30.0)
        t1 = time.perf_counter_ns()
        if buf[:n] != b"R":
            raise BenchError(f"{relay.name}: first output {bytes(buf[:n])!r}{s.stderr()}")
    except BaseException:
        s.close()
        raise
    return s, (t1 - s.spawned_ns) / 1e6


def measure_startup(relay: Relay, spawns: int) -> StartupResult:
    """Time spawn -> first byte of ``printf R``; note the relay's whole-life CPU."""
    samples, cpus = [], []
    for _ in range(spawns):
        s, ms = spawn_first_byte(relay)
        with s:
            samples.append(ms)
            info = s.wait_exit()
            if info.status != 0:
                raise BenchError(f"{relay.name}: exit status {info.status}{s.stderr()}")
            cpus.append(info.own_cpu_ns / 1e6)
    return StartupResult(
        relay.name,
        spawns,
        statistics.median(samples),
        max(samples),
        statistics.median(cpus) if relay.is_relay else None,
        samples,
    )


# The backend's path: a Python process that has imported bottle.relay calls relay.run for each
# session. Each "g" on its terminal runs one; "D" follows when run returned 0.
INPROC_DRIVER = (
    "import os, sys\n"
    "from bottle import relay\n"
    "output, argv = sys.argv[1], sys.argv[2:]\n"
    "os.write(1, b'I')\n"
    "while os.read(0, 1) == b'g':\n"
    "    os.write(1, b'D' if relay.run(argv, output=output) == 0 else b'F')\n"
)


def measure_startup_inprocess(relay: Relay, spawns: int) -> StartupResult:
    """Time ``relay.run(["printf", "R"])`` called in a process that has bottle imported.

    From the byte that asks for a run to the "R" on the terminal; the CPU is the calling
    process's own (``printf`` excluded) from before the request until run has returned.
    """
    output = "direct" if "--output" in relay.options else "copy"
    driver = Relay(f"{relay.name} in process", relay.description, relay.env)
    samples, cpus = [], []
    with Session(driver, [sys.executable, "-c", INPROC_DRIVER, output, "printf", "R"]) as s:
        if s.expect(b"I"):
            raise BenchError(f"{driver.name}: unexpected output after the ready mark")
        for _ in range(spawns):
            cpu0 = s.settled_cpu_ns()
            t0 = time.perf_counter_ns()
            s.write(b"g")
            rest = s.expect(b"R")
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if not rest:  # run's "D" comes after the child's exit and the relay's drain
                buf = bytearray(16)
                rest = bytes(buf[: s.read_some(buf, 30.0)])
            if rest != b"D":
                raise BenchError(f"{driver.name}: relay.run ended with {rest!r}{s.stderr()}")
            cpus.append((s.settled_cpu_ns() - cpu0) / 1e6)
        s.write(b"q")
        info = s.wait_exit()
        if info.status != 0:
            raise BenchError(f"{driver.name}: exit status {info.status}{s.stderr()}")
    return StartupResult(
        driver.name, spawns, statistics.median(samples), max(samples), statistics.median(cpus),
        samples,
    )


# --------------------------------------------------------------------------------------------
# Many sessions


@dataclass
class ManyResult:
    """Several relays streaming at once."""

    relay: str
    sessions: int
    bytes: int
    seconds: float
    mib_s: float
    cpu_s_per_gib: float | None


def measure_many(relay: Relay, payload: Payload, sessions: int) -> ManyResult:
    """Stream ``payload`` through ``sessions`` relays at once; total relay CPU per GiB."""
    streams: list[Stream] = []
    try:
        for _ in range(sessions):
            streams.append(Stream(relay, payload))
        for st in streams:
            st.ready()
        poll = select.poll()
        by_fd: dict[int, tuple[Stream, Any, list[int]]] = {}
        for st in streams:
            poll.register(st.session.master, select.POLLIN)
            by_fd[st.session.master] = (st, hashlib.sha256(), [0])
        t0 = time.perf_counter_ns()
        for st in streams:
            st.go()
        buf = bytearray(65536)
        view = memoryview(buf)
        while by_fd:
            events = poll.poll(30_000)
            if not events:
                raise BenchError(f"{relay.name}: {len(by_fd)} sessions stalled")
            for fd, _ in events:
                st, digest, got = by_fd[fd]
                try:
                    n = os.readv(fd, [buf])
                except OSError:
                    n = 0
                take = min(n, payload.size - got[0])
                digest.update(view[:take])
                got[0] += take
                if n == 0 or got[0] >= payload.size:
                    st.check(got[0], digest)
                    poll.unregister(fd)
                    del by_fd[fd]
        seconds = (time.perf_counter_ns() - t0) / 1e9
        results = [st.finish() for st in streams]
    finally:
        for st in streams:
            st.abort()
    total = payload.size * sessions
    cpu = sum(r.cpu_s or 0.0 for r in results) if relay.is_relay else None
    return ManyResult(
        relay.name,
        sessions,
        total,
        seconds,
        total / MIB / seconds,
        cpu * GIB / total if cpu is not None else None,
    )


# --------------------------------------------------------------------------------------------
# A whole run


METRICS: list[tuple[str, str, str]] = [
    # key, label, format
    ("throughput_mib_s", "throughput, MiB/s", "{:.0f}"),
    ("throughput_cpu_s_per_gib", "relay CPU, s/GiB", "{:.2f}"),
    ("echo_p50_us", "echo p50, us", "{:.1f}"),
    ("echo_p99_us", "echo p99, us", "{:.1f}"),
    ("resize_p50_us", "resize p50, us", "{:.1f}"),
    ("resize_p99_us", "resize p99, us", "{:.1f}"),
    ("resize_burst_ok", "burst ends on last size", "{}"),
    ("idle_wakeups_s", "idle wake-ups/s", "{:.1f}"),
    ("idle_cpu_ms_s", "idle CPU, ms/s", "{:.3f}"),
    ("startup_p50_ms", "start-up p50, ms", "{:.1f}"),
    ("startup_cpu_ms", "start-up relay CPU, ms", "{:.1f}"),
    ("inproc_startup_p50_ms", "relay.run start-up p50, ms", "{:.2f}"),
    ("inproc_startup_cpu_ms", "relay.run start-up CPU, ms", "{:.2f}"),
    ("many_mib_s", "16 sessions, MiB/s", "{:.0f}"),
    ("many_cpu_s_per_gib", "16 sessions CPU, s/GiB", "{:.2f}"),
]

# Metrics where a ratio means something (flags and wake-up counts do not divide usefully).
RATIO_METRICS = [k for k, _, _ in METRICS if k not in ("resize_burst_ok", "idle_wakeups_s")]


Metrics = dict[str, float | bool | None]


def _throughput(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    return _throughput_metrics(measure_throughput(relay, payloads.get(settings.stream_bytes)))


def _throughput_metrics(r: ThroughputResult) -> Metrics:
    return {
        "throughput_mib_s": r.mib_s,
        "throughput_cpu_s_per_gib": r.cpu_s_per_gib,
        "throughput_startup_cpu_s": r.startup_cpu_s,
        "throughput_life_cpu_s": r.life_cpu_s,
        "throughput_wait4_cpu_s": r.wait4_cpu_s,
    }


def _echo(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    return _echo_metrics(measure_echo(relay, settings.echo_trips))


def _echo_metrics(r: LatencyResult) -> Metrics:
    return {"echo_p50_us": r.p50_us, "echo_p99_us": r.p99_us, "echo_cpu_us": r.cpu_us_per_trip}


def _resize(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    return _resize_metrics(measure_resize(relay, settings.resize_trips, settings.resize_burst))


def _resize_metrics(r: ResizeResult) -> Metrics:
    if not r.forwarded:
        return {"resize_forwarded": False}
    return {
        "resize_forwarded": True,
        "resize_p50_us": r.p50_us,
        "resize_p99_us": r.p99_us,
        "resize_burst_ok": r.burst_ok,
        "resize_burst_settle_ms": r.burst_settle_ms,
        "resize_burst_reports": float(r.burst_reports),
    }


def _idle(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    if not relay.is_relay:
        return {}
    r = measure_idle(relay, settings.idle_seconds)
    return {"idle_wakeups_s": r.wakeups_s, "idle_cpu_ms_s": r.cpu_ms_s}


def _startup(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    r = measure_startup(relay, settings.startup_spawns)
    return {"startup_p50_ms": r.p50_ms, "startup_max_ms": r.max_ms, "startup_cpu_ms": r.cpu_ms}


def _inproc(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    # Only bottle's native relay runs in process (the backend's path); the others are programs.
    if relay.implementation != "native":
        return {}
    r = measure_startup_inprocess(relay, settings.startup_spawns)
    return {"inproc_startup_p50_ms": r.p50_ms, "inproc_startup_cpu_ms": r.cpu_ms}


def _many(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    r = measure_many(relay, payloads.get(settings.many_bytes), settings.many_sessions)
    return {"many_mib_s": r.mib_s, "many_cpu_s_per_gib": r.cpu_s_per_gib}


MEASUREMENTS: list[tuple[str, Callable[[Relay, Settings, Payloads], Metrics]]] = [
    ("throughput", _throughput),
    ("echo", _echo),
    ("resize", _resize),
    ("idle", _idle),
    ("startup", _startup),
    ("inproc", _inproc),
    ("many", _many),
]

# Measurements that run every relay at once, taking turns (see measure_*_interleaved).
INTERLEAVED = ("throughput", "echo", "resize")


def _all_at_once(
    name: str, relays: Sequence[Relay], settings: Settings, payloads: Payloads
) -> dict[str, dict[str, float | bool | str | None]]:
    """Throughput, echo or resize through all relays interleaved; on failure, each alone."""
    try:
        if name == "throughput":
            streams = measure_throughput_interleaved(
                relays, payloads.get(settings.stream_bytes), settings.stream_blocks
            )
            return {n: dict(_throughput_metrics(r)) for n, r in streams.items()}
        if name == "echo":
            echoes = measure_echo_interleaved(relays, settings.echo_trips)
            return {n: dict(_echo_metrics(r)) for n, r in echoes.items()}
        resizes = measure_resize_interleaved(relays, settings.resize_trips, settings.resize_burst)
        return {n: dict(_resize_metrics(r)) for n, r in resizes.items()}
    except (BenchError, OSError):
        return {r.name: measure_one(name, r, settings, payloads) for r in relays}


def measure_one(
    name: str, relay: Relay, settings: Settings, payloads: Payloads
) -> dict[str, float | bool | str | None]:
    """Run the measurement ``name`` once for ``relay``; a failure becomes ``<name>_error``."""
    fn = dict(MEASUREMENTS)[name]
    try:
        return dict(fn(relay, settings, payloads))
    except (BenchError, OSError) as e:
        return {f"{name}_error": str(e)}


def measure_all(
    relay: Relay, settings: Settings, payloads: Payloads
) -> dict[str, float | bool | str | None]:
    """Run every measurement once for ``relay``; return flat metrics (errors as strings)."""
    out: dict[str, float | bool | str | None] = {}
    for name, _ in MEASUREMENTS:
        out.update(measure_one(name, relay, settings, payloads))
    return out


def median_metrics(
    runs: list[dict[str, float | bool | str | None]],
) -> dict[str, float | bool | str | None]:
    """Combine several runs: medians of numbers, all() of flags, the first error text."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run if k not in keys]
    out: dict[str, float | bool | str | None] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if any(isinstance(v, str) for v in values):
            out[key] = next(v for v in values if isinstance(v, str))
        elif all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        else:
            nums = [float(v) for v in values if isinstance(v, int | float)]
            out[key] = statistics.median(nums) if nums else None
    return out


def machine_info() -> dict[str, str | int]:
    """Describe the machine: cores, CPU model, kernel, Python."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


Target = dict[str, Any]


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def evaluate_targets(
    results: Mapping[str, Mapping[str, Any]],
    per_run: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[Target]:
    """Compare bottle's native relay, in copy ("native") and direct mode, with issue 12's targets.

    With ``per_run``, a ratio is the median of the per-run ratios: each run measured the two
    relays seconds apart, so their ratio is steadier than the ratio of two medians.
    """
    targets: list[Target] = []

    def ratio_target(
        name: str, subject: str, key: str, ref_name: str, limit: float, le: bool,
        ref_key: str | None = None,
    ) -> None:
        ref_key = ref_key or key
        a = _num(results.get(subject, {}), key)
        b = _num(results.get(ref_name, {}), ref_key)
        if a is None or b is None or b == 0:
            targets.append({"target": name, "measured": "n/a", "met": None})
            return
        ratios = []
        if per_run is not None:
            for x, y in zip(per_run.get(subject, []), per_run.get(ref_name, []), strict=False):
                xa, yb = _num(x, key), _num(y, ref_key)
                if xa is not None and yb:
                    ratios.append(xa / yb)
        r = statistics.median(ratios) if ratios else a / b
        met = r <= limit if le else r >= limit
        targets.append(
            {"target": name, "value": a, "reference": b, "ratio": r, "run_ratios": ratios,
             "met": met}
        )

    def idle_target(subject: str) -> None:
        name = f"{subject} idle: 0 wake-ups/s"
        wake = _num(results.get(subject, {}), "idle_wakeups_s")
        targets.append(
            {"target": name, "value": wake, "met": wake == 0.0}
            if wake is not None
            else {"target": name, "measured": "n/a", "met": None}
        )

    cpu, many = "throughput_cpu_s_per_gib", "many_cpu_s_per_gib"
    ratio_target("direct relay CPU/GiB <= 0.05x script", "direct", cpu, "script", 0.05, True)
    ratio_target("direct throughput >= 0.95x no relay", "direct", "throughput_mib_s", "none",
                 0.95, False)
    ratio_target("direct echo p50 <= 0.8x script", "direct", "echo_p50_us", "script", 0.8, True)
    ratio_target("direct 16 sessions CPU/GiB <= 0.05x script", "direct", many, "script", 0.05,
                 True)
    ratio_target("native relay CPU/GiB <= 0.85x script", "native", cpu, "script", 0.85, True)
    ratio_target("native 16 sessions CPU/GiB <= 1.0x script", "native", many, "script", 1.0,
                 True)
    ratio_target("native resize p99 <= 1.0x script", "native", "resize_p99_us", "script", 1.0,
                 True)
    ratio_target("direct resize p99 <= 1.0x script", "direct", "resize_p99_us", "script", 1.0,
                 True)
    idle_target("native")
    idle_target("direct")
    ratio_target("direct relay.run start-up <= 1.5x script start-up", "direct",
                 "inproc_startup_p50_ms", "script", 1.5, True, ref_key="startup_p50_ms")
    return targets


def run_bench(
    settings: Settings,
    relay_names: Sequence[str] = RELAY_NAMES,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Measure the relays, interleaved run by run so drifting load hits them alike."""
    skipped: dict[str, str] = {}
    active: list[Relay] = []
    for name in relay_names:
        reason = unavailable_reason(RELAYS[name])
        if reason:
            skipped[name] = reason
            log(f"skipping {name}: {reason}")
        else:
            active.append(RELAYS[name])
    per_run: dict[str, list[dict[str, float | bool | str | None]]] = {r.name: [] for r in active}
    load_before = os.getloadavg()
    with Payloads() as payloads:
        for i in range(settings.runs):
            log(f"run {i + 1}/{settings.runs}")
            runs: dict[str, dict[str, float | bool | str | None]] = {r.name: {} for r in active}
            # Metric by metric, every relay back to back (order reversed every other run), so
            # that the load of the moment weighs on all of them alike.
            for name, _ in MEASUREMENTS:
                order = active if i % 2 == 0 else active[::-1]
                if name in INTERLEAVED:
                    for relay_name, got in _all_at_once(name, order, settings, payloads).items():
                        runs[relay_name].update(got)
                    continue
                for relay in order:
                    runs[relay.name].update(measure_one(name, relay, settings, payloads))
            for relay in active:
                per_run[relay.name].append(runs[relay.name])
    results = {name: median_metrics(runs) for name, runs in per_run.items()}
    # Other work on the machine shows up in every figure: say how busy it was.
    machine: dict[str, Any] = {
        **machine_info(),
        "loadavg_before": round(load_before[0], 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
    }
    return {
        "machine": machine,
        "settings": asdict(settings),
        "skipped": skipped,
        "results": results,
        "runs": per_run,
        "targets": evaluate_targets(results, per_run),
    }


# --------------------------------------------------------------------------------------------
# Report


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, str):
        return "error"
    return fmt.format(value)


def format_report(report: Mapping[str, Any]) -> str:
    """Render the results as plain-text tables."""
    results: Mapping[str, Mapping[str, Any]] = report["results"]
    names = list(results)
    lines = []
    m = report["machine"]
    lines.append(
        f"bottle bench: {report['settings']['runs']} run(s), medians; "
        f"{m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}"
    )
    if "loadavg_before" in m:
        lines.append(
            f"load average (1 min) {m['loadavg_before']} before, {m['loadavg_after']} after"
            " (other work on the machine inflates times and CPU alike)"
        )
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    width = max(len(label) for _, label, _ in METRICS) + 2

    def table(title: str, rows: list[tuple[str, list[str]]]) -> None:
        lines.append("")
        lines.append(title.ljust(width) + "".join(n.rjust(12) for n in names))
        for label, cells in rows:
            lines.append(label.ljust(width) + "".join(c.rjust(12) for c in cells))

    rows = []
    for key, label, fmt in METRICS:
        cells = []
        for n in names:
            r = results[n]
            if key.startswith("resize") and r.get("resize_forwarded") is False:
                cells.append("no fwd")
            else:
                cells.append(_cell(r.get(key), fmt))
        rows.append((label, cells))
    table("metric", rows)

    for ref in ("script", "none"):
        if ref not in results:
            continue
        rows = []
        for key, label, _ in METRICS:
            if key not in RATIO_METRICS:
                continue
            base = results[ref].get(key)
            cells = []
            for n in names:
                v = results[n].get(key)
                ok = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (v, base))
                cells.append(f"{v / base:.2f}x" if ok and base else "-")
            rows.append((label, cells))
        table(f"ratio to {'script' if ref == 'script' else 'no relay'}", rows)

    lines.append("")
    lines.append("targets (issue 12; native = copy mode, direct = --output direct)")
    for t in report["targets"]:
        if t["met"] is None:
            lines.append(f"  n/a   {t['target']}: not measured")
        elif "ratio" in t:
            verdict = "met " if t["met"] else "MISS"
            runs = t.get("run_ratios") or []
            spread = (
                f" (runs: {', '.join(f'{x:.2f}' for x in runs)})" if len(runs) > 1 else ""
            )
            lines.append(
                f"  {verdict}  {t['target']}: {t['value']:.4g} vs {t['reference']:.4g},"
                f" ratio {t['ratio']:.2f}x{spread}"
            )
        else:
            verdict = "met " if t["met"] else "MISS"
            lines.append(f"  {verdict}  {t['target']}: {t['value']:.2f}")
    errors = [
        f"  {n}: {k.removesuffix('_error')}: {v}"
        for n, r in results.items()
        for k, v in r.items()
        if k.endswith("_error")
    ]
    if errors:
        lines.append("")
        lines.append("errors")
        lines += errors
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``bottle bench``: measure, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(
        prog="bottle bench",
        description="Measure the PTY relay side by side with script(1), pty.spawn and no relay.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (~20 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--runs", type=int, help="repeat the whole set N times (median)")
    parser.add_argument(
        "--relay",
        action="append",
        choices=RELAY_NAMES,
        help="measure only this relay (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.runs is not None:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        settings = Settings(**{**asdict(settings), "runs": args.runs})
    if sys.platform != "linux":
        print("bottle bench: needs Linux (/proc, pidfd)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"bottle bench: {msg}", file=sys.stderr, flush=True)

    out = None
    if args.json:
        try:  # before measuring, so a bad path costs no minutes
            out = open(args.json, "w")  # noqa: SIM115 - closed below, after the run
        except OSError as e:
            print(f"bottle bench: cannot write {args.json}: {e.strerror}", file=sys.stderr)
            return 2
    try:
        report = run_bench(settings, args.relay or RELAY_NAMES, log)
        print(format_report(report))
        if out is not None:
            json.dump(report, out, indent=2)
            out.write("\n")
            log(f"results written to {args.json}")
    finally:
        if out is not None:
            out.close()
    has_error = any(k.endswith("_error") for r in report["results"].values() for k in r)
    return 1 if has_error else 0


if __name__ == "__main__":
    sys.exit(main())
