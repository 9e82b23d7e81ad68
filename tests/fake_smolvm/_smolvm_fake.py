"""A fake `smolvm` for bottle's tests: smolvm 1.9.3's flags, texts, streams and exit codes.

Every behaviour copies smolvm's source (smol-machines/smolvm, tag v1.9.3 unless a comment names
another tag); the comment above each piece names the file it rests on. FAKE_SMOLVM_VERSION picks
an older release (1.0.2 and later) and the behaviour changes with it wherever smolvm changed.
Machines are JSON records under $FAKE_SMOLVM_STATE; a guest command runs on this host, as the user
smolvm would run it as. Faults are FAKE_SMOLVM_* variables: see README.md beside this file.
Standard library only; never imports bottle.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

DEFAULT_VERSION = "1.9.3"
# The last release the fake knows anything about. Releases after 1.9.3 (the last tag whose source
# was read) are known only from their pull requests: every behaviour that rests on one says
# "from release notes, not source" and names the pull request (README.md, Versions).
NEWEST_KNOWN = (1, 16, 0)
# src/agent/launcher.rs: the environment the guest agent (PID 1) is started with; a bare-VM exec
# inherits it. crates/smolvm-agent/src/crun.rs DEFAULT_CONTAINER_PATH is the same PATH.
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_TERM = "xterm-256color"
POLL_TIMEOUT_MS = 100  # src/agent/client.rs POLL_TIMEOUT_MS
DRAIN_IDLE_S = 0.1  # after the guest child exits, stop reading output once idle this long
CHUNK = 65536
# crates/smolvm-agent/src/process.rs MAX_EXEC_OUTPUT; src/agent/client.rs
# MAX_STREAMING_EXEC_OUTPUT: both 11 MiB.
MAX_EXEC_OUTPUT = 11 * 1024 * 1024
FATAL_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT}


def _parse_version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    if m is None:
        sys.stderr.write(
            f"fake smolvm: FAKE_SMOLVM_VERSION={text!r} is not a version like 1.9.3\n")
        sys.exit(70)
    version = int(m[1]), int(m[2]), int(m[3])
    if version > NEWEST_KNOWN:
        sys.stderr.write(
            f"fake smolvm: FAKE_SMOLVM_VERSION={text!r} is newer than the newest release the "
            f"fake knows ({'.'.join(map(str, NEWEST_KNOWN))})\n")
        sys.exit(70)
    return version


VERSION_TEXT = os.environ.get("FAKE_SMOLVM_VERSION") or DEFAULT_VERSION
VERSION = _parse_version(VERSION_TEXT)


def since(major: int, minor: int, patch: int) -> bool:
    """True when the faked release has the change that first shipped in that tag."""
    return (major, minor, patch) <= VERSION


class SmolvmError(Exception):
    """A smolvm-level failure: `Error: <msg>` on stderr, exit 1 (src/main.rs)."""


class UsageError(Exception):
    """A clap usage error: printed on stderr, exit 2."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class FakeSetupError(Exception):
    """The test set the fake up wrongly (not a smolvm behaviour): exit 70."""


# src/data/errors.rs: the Display of each error variant main.rs prints after `Error: `.
def agent_err(op: str, reason: str) -> SmolvmError:
    return SmolvmError(f"agent operation failed: {op}: {reason}")


def config_err(op: str, reason: str) -> SmolvmError:
    return SmolvmError(f"config operation failed: {op}: {reason}")


def os_error_text(e: OSError) -> str:
    """Rust's io::Error Display: `<strerror> (os error N)`."""
    return f"{os.strerror(e.errno)} (os error {e.errno})" if e.errno else str(e)


# --------------------------------------------------------------------------- clap-like parser


class Opt:
    # Plain classes, not dataclasses: importing dataclasses costs every invocation ~7 ms.
    def __init__(
        self,
        long: str,
        short: str | None = None,
        value: str | None = None,  # metavar when the option takes a value, None for a flag
        multiple: bool = False,
        parse: Callable[[str], Any] | None = None,  # clap value_parser; ValueError(reason)
        since: tuple[int, int, int] = (1, 0, 2),
    ) -> None:
        self.long, self.short, self.value = long, short, value
        self.multiple, self.parse, self.since = multiple, parse, since

    def display(self) -> str:
        return f"--{self.long} <{self.value}>" if self.value else f"--{self.long}"


class Spec:
    def __init__(
        self,
        usage: str,
        about: str,
        opts: list[Opt],
        positionals: tuple[str, ...] = (),  # metavars, in order
        required: tuple[str, ...] = (),  # required option longs / positional names
        trailing: str | None = None,  # trailing_var_arg positional (every word after the first)
        last: str | None = None,  # `last = true` positional: only after `--`
        conflicts: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.usage, self.about = usage, about
        # Options a later release added do not exist in the faked one: clap rejects them.
        self.opts = [o for o in opts if o.since <= VERSION]
        self.positionals, self.required = positionals, required
        self.trailing, self.last, self.conflicts = trailing, last, conflicts


def help_text(spec: Spec) -> str:
    lines = [spec.about, "", f"Usage: {spec.usage}", ""]
    if spec.positionals or spec.trailing or spec.last:
        lines.append("Arguments:")
        for p in spec.positionals:
            lines.append(f"  <{p.upper()}>")
        for p in (spec.trailing, spec.last):
            if p:
                lines.append(f"  [{p.upper()}]...")
        lines.append("")
    lines.append("Options:")
    for o in spec.opts:
        short = f"-{o.short}, " if o.short else "    "
        lines.append(f"  {short}{o.display()}")
    lines.append("  -h, --help  Print help")
    return "\n".join(lines) + "\n"


def parse(spec: Spec, args: list[str]) -> dict[str, Any]:
    """Parse `args` the way clap would for `spec`; -h/--help prints help and exits 0."""
    longs = {o.long: o for o in spec.opts}
    shorts = {o.short: o for o in spec.opts if o.short}
    out: dict[str, Any] = {o.long: ([] if o.multiple else None) for o in spec.opts}
    seen: set[str] = set()
    pos: list[str] = []
    after_dashdash: list[str] = []

    def err(msg: str) -> NoReturn:
        raise UsageError(msg, spec.usage)

    def store(o: Opt, v: Any) -> None:
        if o.long in seen and not o.multiple:
            err(f"the argument '{o.display()}' cannot be used multiple times")
        seen.add(o.long)
        if o.parse is not None and isinstance(v, str):
            try:
                v = o.parse(v)
            except ValueError as e:
                err(f"invalid value '{v}' for '{o.display()}': {e}")
        if o.multiple:
            out[o.long].append(v)
        else:
            out[o.long] = v

    def take_value(o: Opt, i: int) -> str:
        if i + 1 < len(args) and not (args[i + 1].startswith("-") and args[i + 1] != "-"):
            return args[i + 1]
        err(f"a value is required for '{o.display()}' but none was supplied")

    def show_help() -> NoReturn:
        sys.stdout.write(help_text(spec))
        sys.exit(0)

    i = 0
    trailing_started = False
    while i < len(args):
        a = args[i]
        if trailing_started:
            pos.append(a)
        elif a == "--":
            after_dashdash = args[i + 1 :]
            break
        elif a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name == "help":
                show_help()
            o = longs.get(name)
            if o is None:
                err(f"unexpected argument '{a}' found")
            if o.value:
                if not eq:
                    val = take_value(o, i)
                    i += 1
                store(o, val)
            else:
                if eq:
                    err(f"unexpected value '{val}' for '{o.display()}' found; "
                        "no more were expected")
                store(o, True)
        elif a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                c = a[j]
                if c == "h":
                    show_help()
                o = shorts.get(c)
                if o is None:
                    err(f"unexpected argument '-{c}' found")
                if o.value:
                    rest = a[j + 1 :]
                    if rest.startswith("="):
                        rest = rest[1:]
                    if rest:
                        store(o, rest)
                    else:
                        store(o, take_value(o, i))
                        i += 1
                    break
                store(o, True)
                j += 1
        else:
            if spec.last is not None and len(pos) >= len(spec.positionals):
                err(f"unexpected argument '{a}' found")
            pos.append(a)
            if spec.trailing is not None and len(pos) > len(spec.positionals):
                trailing_started = True
        i += 1

    if spec.last is not None:
        out[spec.last] = after_dashdash
    else:
        pos.extend(after_dashdash)
    for idx, name in enumerate(spec.positionals):
        out[name] = pos[idx] if idx < len(pos) else None
    extra = pos[len(spec.positionals) :]
    if spec.trailing is not None:
        out[spec.trailing] = extra
    elif extra:
        err(f"unexpected argument '{extra[0]}' found")
    missing = []
    for r in spec.required:
        if r in longs and out[r] is None:
            missing.append(longs[r].display())
        elif r == spec.trailing and not out[r]:
            missing.append(f"<{r.upper()}>...")
        elif r in spec.positionals and out[r] is None:
            missing.append(f"<{r.upper()}>")
    if missing:
        err("the following required arguments were not provided:\n  " + "\n  ".join(missing))
    for a_name, b_name in spec.conflicts:
        if a_name in longs and b_name in longs and out[a_name] and out[b_name]:
            err(
                f"the argument '{longs[a_name].display()}' cannot be used with "
                f"'{longs[b_name].display()}'"
            )
    return out


# clap's integer value parsers: u8/u16/u32 go through RangedI64ValueParser (parse as i64, then
# "N is not in LO..=HI"), u64 through RangedU64ValueParser. The reasons are Rust's
# ParseIntError texts.
def _rust_int(text: str, signed: bool) -> int:
    if text == "":
        raise ValueError("cannot parse integer from empty string")
    body = text[1:] if text[0] in "+-" and (signed or text[0] == "+") else text
    if body == "" or not body.isascii() or not body.isdigit():
        raise ValueError("invalid digit found in string")
    n = int(text)
    if n > (2**63 - 1 if signed else 2**64 - 1):
        raise ValueError("number too large to fit in target type")
    if n < -(2**63):
        raise ValueError("number too small to fit in target type")
    return n


def ranged(hi: int) -> Callable[[str], int]:
    def parse_ranged(text: str) -> int:
        n = _rust_int(text, signed=True)
        if not 0 <= n <= hi:
            raise ValueError(f"{n} is not in 0..={hi}")
        return n

    return parse_ranged


U8, U32 = ranged(2**8 - 1), ranged(2**32 - 1)


def u64(text: str) -> int:
    return _rust_int(text, signed=False)


def ipv4(text: str) -> str:
    # std::net::Ipv4Addr's FromStr: four decimal octets, no leading zeros.
    import ipaddress  # only here: imports are paid by every invocation

    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError("invalid IPv4 address syntax") from None
    return text


def net_backend(text: str) -> str:
    # src/network/backend.rs NetworkBackend (clap value_enum).
    if text not in ("tsi", "virtio-net"):
        raise ValueError("\n  [possible values: tsi, virtio-net]")
    return text


def image_arg(text: str) -> str:
    # src/cli/parsers.rs parse_image
    if not text.strip():
        raise ValueError("image reference must not be empty")
    return text


def _rust_ip(text: str) -> Any:
    """std::net::IpAddr's FromStr: dotted quad without leading zeros, or IPv6 without a zone."""
    import ipaddress  # only here: imports are paid by every invocation

    if "%" in text:
        raise ValueError(text)
    return ipaddress.ip_address(text)


def cidr(text: str) -> str:
    # src/smolfile.rs parse_cidr (re-exported by src/cli/parsers.rs): `IpNet` (`ADDR/LEN`, LEN
    # decimal and within the address width), else a bare `IpAddr` (full-length prefix); the
    # result is ipnet's Display, which keeps host bits (10.1.2.3/8 stays so).
    addr, slash, prefix = text.partition("/")
    try:
        ip = _rust_ip(addr)
        if slash:
            if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 3):
                raise ValueError(text)
            bits = int(prefix)
            if bits > ip.max_prefixlen:
                raise ValueError(text)
        else:
            bits = ip.max_prefixlen
    except ValueError:
        raise ValueError(
            f"invalid CIDR '{text}': expected format like 10.0.0.0/8 or 1.1.1.1") from None
    return f"{ip}/{bits}"


# humantime::parse_duration (src/cli/parsers.rs parse_duration wraps it and rejects zero).
_DURATION_UNITS = {
    "nanos": 1e-9, "nsec": 1e-9, "ns": 1e-9,
    "usec": 1e-6, "us": 1e-6, "µs": 1e-6,
    "millis": 1e-3, "msec": 1e-3, "ms": 1e-3,
    "seconds": 1, "second": 1, "secs": 1, "sec": 1, "s": 1,
    "minutes": 60, "minute": 60, "mins": 60, "min": 60, "m": 60,
    "hours": 3600, "hour": 3600, "hrs": 3600, "hr": 3600, "h": 3600,
    "days": 86400, "day": 86400, "d": 86400,
    "weeks": 604800, "week": 604800, "wk": 604800, "wks": 604800, "w": 604800,
    "months": 2630016, "month": 2630016, "M": 2630016,
    "years": 31557600, "year": 31557600, "y": 31557600,
}


def duration(text: str) -> float:
    if not text.strip():
        raise ValueError("value was empty")
    pos, n, total = 0, len(text), 0.0
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        if not text[pos].isdigit():
            raise ValueError(f"expected number at {pos}")
        start = pos
        while pos < n and text[pos].isdigit():
            pos += 1
        num = int(text[start:pos])
        while pos < n and text[pos].isspace():
            pos += 1
        unit_start = pos
        while pos < n and not (text[pos].isdigit() or text[pos].isspace()):
            pos += 1
        unit = text[unit_start:pos]
        if not unit:
            raise ValueError(f"time unit needed, for example {num}sec or {num}ms")
        if unit not in _DURATION_UNITS:
            raise ValueError(
                f'unknown time unit "{unit}", supported units: ns, us, ms, sec, min, hours, '
                "days, weeks, months, years (and few variations)"
            )
        total += num * _DURATION_UNITS[unit]
    if total <= 0:
        raise ValueError("timeout must be greater than 0 (e.g., 5sec, 30s)")
    return total


# --------------------------------------------------------------------------- state store


class Store:
    """Machine records as JSON files, guarded by one fcntl lock for concurrent invocations."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.machines = os.path.join(root, "machines")
        os.makedirs(self.machines, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(os.path.join(self.root, "lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _path(self, name: str) -> str:
        return os.path.join(self.machines, name + ".json")

    def load(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self._path(name)) as f:
                rec: dict[str, Any] = json.load(f)
                return rec
        except FileNotFoundError:
            return None

    def save(self, rec: dict[str, Any]) -> None:
        tmp = self._path(rec["name"]) + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
        os.replace(tmp, self._path(rec["name"]))

    def update(self, name: str, **fields: Any) -> None:
        with self.locked():
            rec = self.load(name)
            if rec is not None:
                rec.update(fields)
                self.save(rec)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def all(self) -> list[dict[str, Any]]:
        recs = []
        for fn in sorted(os.listdir(self.machines)):
            if fn.endswith(".json"):
                rec = self.load(fn[: -len(".json")])
                if rec is not None:
                    recs.append(rec)
        return recs

    def bump(self, counter: str) -> int:
        """Increment a counter file (call with the lock held) and return its new value."""
        path = os.path.join(self.root, counter)
        try:
            with open(path) as f:
                n = int(f.read().strip() or "0")
        except FileNotFoundError:
            n = 0
        with open(path, "w") as f:
            f.write(str(n + 1))
        return n + 1


def env_flag(name: str) -> str | None:
    v = os.environ.get(name)
    return v if v not in (None, "") else None


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fault_delay(sub: str) -> None:
    """FAKE_SMOLVM_DELAY_<SUB>: the subcommand hangs this long (holding no lock)."""
    delay = env_flag(f"FAKE_SMOLVM_DELAY_{sub.upper()}")
    if sub == "start" and delay is None:
        delay = env_flag("FAKE_SMOLVM_START_DELAY")
    if delay:
        time.sleep(float(delay))


# --------------------------------------------------------------------------- images


def load_image_table() -> dict[str, dict[str, Any]]:
    """FAKE_SMOLVM_IMAGES: {"<ref as given to --image>": {"user", "workdir", "env"}}."""
    path = env_flag("FAKE_SMOLVM_IMAGES")
    if path is None:
        return {}
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise FakeSetupError(f"FAKE_SMOLVM_IMAGES={path}: {e}") from None
    if not isinstance(table, dict):
        raise FakeSetupError(f"FAKE_SMOLVM_IMAGES={path}: expected a JSON object")
    for ref, conf in table.items():
        ok = (
            isinstance(conf, dict)
            and set(conf) <= {"user", "workdir", "env"}
            and isinstance(conf.get("user"), (str, type(None)))
            and isinstance(conf.get("workdir"), (str, type(None)))
            and isinstance(conf.get("env", []), list)
            and all(isinstance(e, str) for e in conf.get("env", []))
        )
        if not ok:
            raise FakeSetupError(
                f"FAKE_SMOLVM_IMAGES={path}: entry {ref!r} must be "
                '{"user": str|null, "workdir": str|null, "env": ["K=V", ...]}'
            )
    return table


def image_config(key: str) -> dict[str, Any] | None:
    conf = load_image_table().get(key)
    if conf is None:
        return None
    return {"user": conf.get("user"), "workdir": conf.get("workdir"), "env": conf.get("env", [])}


# src/data/image_source.rs classify/looks_local: `-`, an explicit path or an archive suffix is a
# local source, everything else a registry reference (even a same-named file in the cwd).
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def looks_local(image: str) -> bool:
    return image.startswith(("/", "./", "../")) or image.endswith(ARCHIVE_SUFFIXES)


def is_local_ref(reference: str) -> bool:
    return reference.startswith(("local:", "local-dir:"))


def looks_like_dockerfile(path: str) -> bool:
    name = os.path.basename(path).lower()
    if name in ("dockerfile", "containerfile") or name.endswith((".dockerfile", ".containerfile")):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode()
    except (OSError, UnicodeDecodeError):
        return False
    for line in head.splitlines()[:50]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word = line.split()[0].upper()
        return word in ("FROM", "ARG")
    return False


def resolve_image(image: str) -> tuple[str, bool]:
    """`resolve(classify(image))`: the reference the record keeps, and whether it is local."""
    import hashlib

    if image == "-":
        digest = hashlib.sha256(sys.stdin.buffer.read()).hexdigest()
        return f"local:{digest}", True
    if not looks_local(image):
        return image, False
    if os.path.isdir(image):
        try:
            return f"local-dir:{os.path.realpath(image, strict=True)}", True
        except OSError as e:
            raise config_err(
                "--image", f"cannot use rootfs directory {image}: {os_error_text(e)}"
            ) from None
    try:
        os.stat(image)
    except OSError as e:
        raise config_err("--image", f"cannot read archive {image}: {os_error_text(e)}") from None
    if not os.path.isfile(image):
        raise config_err("--image", f"{image} is not a file")
    if looks_like_dockerfile(image):
        raise config_err(
            "--image",
            f"{image} looks like a Dockerfile, not an image.\nsmolvm boots images, it does not "
            "build them — build first, then pass the result:\n  docker build -t myapp . && "
            "docker save myapp | smolvm machine run --image - -- ...",
        )
    h = hashlib.sha256()
    with open(image, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return f"local:{h.hexdigest()}", True


# --------------------------------------------------------------------------- egress

RESOLVE_TIMEOUT_S = 10  # src/smolfile.rs resolve_host_to_cidrs: recv_timeout(10 s)


def load_hosts_table() -> dict[str, list[str] | None]:
    """FAKE_SMOLVM_HOSTS: {"name": ["ip", …] | null}; null fails like an unknown name."""
    path = env_flag("FAKE_SMOLVM_HOSTS")
    if path is None:
        return {}
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise FakeSetupError(f"FAKE_SMOLVM_HOSTS={path}: {e}") from None
    ok = isinstance(table, dict) and all(
        v is None or (isinstance(v, list) and all(isinstance(ip, str) for ip in v))
        for v in table.values())
    if not ok:
        raise FakeSetupError(f'FAKE_SMOLVM_HOSTS={path}: expected {{"name": ["ip", ...] | null}}')
    return {k.lower().rstrip("."): v for k, v in table.items()}


def _system_resolve(host: str) -> list[str]:
    """`format!("{host}:0").to_socket_addrs()` (getaddrinfo, SOCK_STREAM) in a thread, given
    RESOLVE_TIMEOUT_S as smolvm gives it."""
    import socket
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["addrs"] = [ai[4][0] for ai in socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)]
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(RESOLVE_TIMEOUT_S)
    if t.is_alive():
        raise ValueError(
            f"DNS resolution for '{host}' timed out after {RESOLVE_TIMEOUT_S} seconds")
    if "error" in box:
        e = box["error"]
        # Rust's LookupHost error: "failed to lookup address information: <gai_strerror>".
        detail = e.strerror if isinstance(e, socket.gaierror) else os_error_text(e)
        raise ValueError(
            f"failed to resolve '{host}': failed to lookup address information: {detail}")
    return [a.split("%", 1)[0] for a in box["addrs"]]


def resolve_host_to_cidrs(host: str) -> list[str]:
    """src/smolfile.rs resolve_host_to_cidrs; ValueError(reason) on failure."""
    try:
        ip = _rust_ip(host)
    except ValueError:
        pass
    else:
        return [f"{ip}/{ip.max_prefixlen}"]
    if ":" in host:
        raise ValueError(
            f"invalid hostname '{host}': port suffixes are not supported. Use the hostname only "
            "(all ports are allowed to resolved IPs).")
    table = load_hosts_table()
    key = host.lower().rstrip(".")
    if key in table:
        addrs = table[key]
        if addrs is None:
            # glibc's gai_strerror(EAI_NONAME)
            raise ValueError(f"failed to resolve '{host}': failed to lookup address "
                             "information: Name or service not known")
    else:
        addrs = _system_resolve(host)
    if not addrs:
        raise ValueError(f"'{host}' resolved to no addresses")
    out_cidrs = []
    for a in addrs:
        ip = _rust_ip(a)
        out_cidrs.append(f"{ip}/{ip.max_prefixlen}")
    return out_cidrs


def resolve_egress_flags(a: dict[str, Any]) -> tuple[list[str], bool, list[str] | None]:
    """src/cli/machine.rs resolve_egress_flags: (allowed CIDRs, net, DNS filter hosts). A name
    that does not resolve fails the create: `config operation failed: --allow-host: …`."""
    allow_cidr = list(a["allow_cidr"])
    for host in a["allow_host"]:
        try:
            allow_cidr += resolve_host_to_cidrs(host)
        except ValueError as e:
            raise config_err("--allow-host", str(e)) from None
    if a["outbound_localhost_only"]:
        allow_cidr += ["127.0.0.0/8", "::1/128"]
    net = bool(a["net"] or allow_cidr)
    return allow_cidr, net, (list(a["allow_host"]) or None)


def extract_registry(image: str) -> str:
    # src/registry.rs extract_registry
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first):
        return first
    return "docker.io"


def registry_pull_hosts(image: str) -> list[str]:
    # src/registry.rs registry_pull_hosts (the port of "host:5000" stays, as in smolvm)
    host = extract_registry(image)
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return ["docker.io", "docker.com"]
    if host.endswith("smolmachines.com"):
        return ["smolmachines.com"]
    return [host]


def hostname_allowed(name: str, allowed: list[str]) -> bool:
    # crates/smolvm-network/src/dns.rs hostname_allowed/normalize_hostname: exact or subdomain
    name = name.rstrip(".").lower()
    norm = [h.rstrip(".").lower() for h in allowed if h.rstrip(".")]
    return any(name == h or name.endswith("." + h) for h in norm)


def launch_egress(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The egress policy `start` boots the machine with, or None when unrestricted.

    src/cli/vm_common.rs start_vm_named_with_db: the stored names are resolved again (a
    failure only warns) and added to the stored CIDRs; on a first boot that pulls a registry
    image the registry's hosts join the DNS allow-list (LaunchFeatures::allow_image_pull_egress,
    src/agent/launcher.rs, since 1.3.5) — for this boot only, the record keeps the user's list.
    """
    hosts = rec.get("dns_filter_hosts")
    cidrs = rec.get("allowed_cidrs")
    if not cidrs and not hosts:
        return None
    enforced = list(cidrs or [])
    for host in hosts or []:
        try:
            enforced += resolve_host_to_cidrs(host)
        except ValueError as e:
            err(f"Warning: could not resolve '{host}' for egress policy: {e}")
    dns = list(hosts) if hosts else None
    pulls = (rec.get("image") and not rec.get("image_local") and not rec.get("init_completed"))
    if since(1, 3, 5) and dns and pulls:
        for host in registry_pull_hosts(rec["image"]):
            if not any(h.lower() == host.lower() for h in dns):
                dns.append(host)
    return {"cidrs": enforced, "hosts": dns}


# crates/smolvm-network/src/egress.rs (v1.9.3, since f8f7d148 in 1.1.3) FloorMode::MetadataOnly,
# the local default: the virtio-net gateway denies the cloud-metadata link-local ranges before it
# looks at any allow-list. (SMOLVM_EGRESS_FLOOR, SMOLVM_EGRESS_ALLOW_PRIVATE and
# SMOLVM_PUBLISH_ADDR, which change the floor, are not faked.)
METADATA_FLOOR = ("169.254.0.0/16", "fe80::/10")
# From release notes, not source: smolvm PR #1060 ("Floor host loopback in the default local
# egress mode"; shipped in 1.13.0, release PR #1063) denies "a guest's connections to the host's
# own loopback and unspecified addresses by default, while letting an explicit static allow-list
# entry re-open them". The ranges and the meaning of "re-open" (an allowed CIDR that contains
# them) are the fake's reading of that sentence.
LOOPBACK_FLOOR = ("127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128")
LOOPBACK_FLOOR_SINCE = (1, 13, 0)


def launch_backend(rec: dict[str, Any]) -> str | None:
    """src/network/launch.rs plan_launch_network: the boot's network backend, None without one.
    An egress policy forces virtio-net since 1.1.3 (f8f7d148); before, only ports did."""
    policy = bool(rec.get("allowed_cidrs") or rec.get("dns_filter_hosts"))
    if not has_network(rec):
        return None
    if rec.get("network_backend"):
        return str(rec["network_backend"])
    forced = rec.get("ports") or rec.get("network_name") or (policy and since(1, 1, 3))
    return "virtio-net" if forced else "tsi"


def launch_floor(rec: dict[str, Any], egress: dict[str, Any] | None) -> list[str] | None:
    """Not smolvm's: what the boot's virtio-net gateway denies whatever the allow-list says (the
    fake enforces nothing). None where that is not known: no network, TSI (its filter is
    libkrun's, whose source was not read) or a release before 1.1.3."""
    if not since(1, 1, 3) or launch_backend(rec) != "virtio-net":
        return None
    import ipaddress  # only here: imports are paid by every invocation

    floor = list(METADATA_FLOOR)
    if since(*LOOPBACK_FLOOR_SINCE):
        allowed = []
        for c in (egress or {}).get("cidrs") or []:
            with contextlib.suppress(ValueError):
                allowed.append(ipaddress.ip_network(c, strict=False))
        for entry in LOOPBACK_FLOOR:
            parts = [ipaddress.ip_network(entry)]
            for net in allowed:
                kept: list[Any] = []
                for part in parts:
                    if part.version != net.version or not part.overlaps(net):
                        kept.append(part)
                    elif not net.supernet_of(part):
                        kept.extend(part.address_exclude(net))
                parts = kept
            floor += [str(p) for p in ipaddress.collapse_addresses(parts)]
    return floor


def pull_blocked(image: str, egress: dict[str, Any] | None) -> str | None:
    """Why the guest's pull cannot reach the registry under `egress` (crane's text is
    illustrative), or None. With an allow-list of names, only allowed names resolve in the
    guest; with CIDRs only, the registry's addresses (from FAKE_SMOLVM_HOSTS only: no real
    DNS) must be inside one."""
    if egress is None:
        return None
    host = extract_registry(image)
    endpoint = "index.docker.io" if host == "docker.io" else host
    name = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 else endpoint
    fetching = f'Error: fetching manifest {image}: Get "https://{endpoint}/v2/": dial tcp: '
    if egress["hosts"] is not None:
        if hostname_allowed(name, egress["hosts"]):
            return None
        return f"{fetching}lookup {name}: no such host"
    import ipaddress

    addrs = load_hosts_table().get(name.lower()) or []
    nets = []
    for c in egress["cidrs"]:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(c, strict=False))
    for a in addrs:
        ip = ipaddress.ip_address(a)
        if any(ip.version == n.version and ip in n for n in nets):
            return None
    first = addrs[0] if addrs else "0.0.0.0"
    return f"{fetching}connect {first}:443: connection refused"


def has_network(rec: dict[str, Any]) -> bool:
    # src/network/launch.rs plan_launch_network: --net, a published port, an egress policy or a
    # named network all give the machine a network (--dns and --allow-* imply --net at create).
    return bool(rec.get("network") or rec.get("ports") or rec.get("allowed_cidrs")
                or rec.get("network_name"))


# --------------------------------------------------------------------------- lifecycle

MACHINE = "smolvm machine"

CREATE = Spec(
    usage=f"{MACHINE} create [OPTIONS] [-- <COMMAND>...]",
    about="Create a new named machine configuration",
    opts=[
        Opt("name", "n", "NAME"),
        Opt("label", None, "KEY=VALUE", multiple=True, since=(1, 8, 0)),
        Opt("image", "I", "IMAGE", parse=image_arg),
        Opt("max-image-size", None, "SIZE", since=(1, 2, 0)),
        Opt("cpus", None, "N", parse=U8),
        Opt("mem", None, "MiB", parse=U32),
        Opt("storage", None, "GiB", parse=u64),
        Opt("overlay", None, "GiB", parse=u64),
        Opt("volume", "v", "HOST|REMOTE:GUEST[:ro]" if since(1, 9, 3) else "HOST:GUEST[:ro]",
            multiple=True),
        Opt("port", "p", "HOST:GUEST", multiple=True),
        Opt("net"),
        Opt("net-backend", None, "NET_BACKEND", parse=net_backend),
        Opt("dns", None, "IP", parse=ipv4, since=(1, 2, 5)),
        Opt("network", None, "NAME", since=(1, 8, 3)),
        Opt("allow-cidr", None, "CIDR", multiple=True, parse=cidr),
        Opt("allow-host", None, "HOSTNAME", multiple=True),
        Opt("outbound-localhost-only"),
        Opt("gpu"),
        Opt("gpu-vram", None, "MiB"),
        Opt("rosetta", since=(1, 5, 0)),
        Opt("expose-socket", None, "GUEST_PATH[:HOST_PATH]", multiple=True, since=(1, 6, 4)),
        Opt("mount-socket", None, "HOST_PATH:GUEST_PATH", multiple=True, since=(1, 6, 4)),
        Opt("init", None, "COMMAND", multiple=True),
        Opt("env", "e", "KEY=VALUE", multiple=True),
        Opt("workdir", "w", "DIR"),
        Opt("ssh-agent"),
        Opt("cuda", since=(1, 3, 2)),
        Opt("auto-graph", since=(1, 7, 2)),
        Opt("docker-socket", since=(1, 6, 0)),
        Opt("secret-env", None, "GUEST_VAR=HOST_VAR", multiple=True),
        Opt("secret-file", None, "GUEST_VAR=PATH", multiple=True),
        Opt("smolfile", "s", "PATH"),
        Opt("from", None, "PATH"),
    ],
    last="command",
    conflicts=(("from", "image"), ("from", "smolfile")),
)
# src/cli/proxy_opts.rs ProxyOpts is flattened into StartCmd.
START = Spec(
    usage=f"{MACHINE} start [OPTIONS]",
    about="Start a machine",
    opts=[
        Opt("name", "n", "NAME"),
        Opt("forkable"),
        Opt("fork-pool-size", None, "CLONES", since=(1, 7, 2)),
        Opt("cuda-vram-limit-mib", None, "MIB", since=(1, 7, 2)),
        Opt("proxy", None, "URL"),
        Opt("no-proxy", None, "LIST"),
    ],
)
STOP = Spec(
    usage=f"{MACHINE} stop [OPTIONS]",
    about="Stop a running machine",
    opts=[Opt("name", "n", "NAME")],
)
DELETE = Spec(
    usage=f"{MACHINE} delete [OPTIONS] --name <NAME>",
    about="Delete a machine configuration",
    opts=[Opt("name", "n", "NAME"), Opt("force", "f"), Opt("cascade", since=(1, 7, 0))],
    required=("name",),
)
LS = Spec(
    usage=f"{MACHINE} ls [OPTIONS]",
    about="List all machines",
    opts=[Opt("verbose", "v"), Opt("json")],
)
STATUS = Spec(
    usage=f"{MACHINE} status [OPTIONS]",
    about="Show machine status",
    opts=[Opt("name", "n", "NAME"), Opt("json")],
)


def get(store: Store, name: str) -> dict[str, Any]:
    rec = store.load(name)
    if rec is None:
        raise SmolvmError(f"vm not found: {name}")
    return rec


# src/data/mod.rs validate_vm_name (label "machine name"); build_vm_record wraps the reason in
# Error::config("create machine", …).
def validate_name(name: str) -> None:
    label = "machine name"

    def bad(reason: str) -> NoReturn:
        raise config_err("create machine", reason)

    if not name:
        bad(f"{label} cannot be empty")
    if len(name.encode()) > 128:
        bad(f"{label} too long: {len(name.encode())} characters (max 128)")
    quoted = json.dumps(name, ensure_ascii=False)  # Rust's {:?} of a printable str
    if not (name[0].isascii() and name[0].isalnum()):
        bad(f"{label} must start with a letter or digit (got: {quoted})")
    if name.endswith("-"):
        bad(f"{label} cannot end with a hyphen (got: {quoted})")
    prev_hyphen = False
    for c in name:
        if c == "-" and prev_hyphen:
            bad(f"{label} cannot contain consecutive hyphens")
        prev_hyphen = c == "-"
        if not (c.isascii() and c.isalnum()) and c not in "-_":
            if c in "/\\":
                bad(f"{label} cannot contain path separators")
            bad(f"{label} contains invalid character: '{c}'")


def parse_env_spec(spec: str) -> tuple[str, str] | None:
    """src/util.rs parse_env_spec: `K=V`; a bare `K` copies this process's value (dropped when
    unset); an empty key is dropped."""
    key, eq, value = spec.partition("=")
    if eq:
        return (key, value) if key else None
    if not spec:
        return None
    host = os.environ.get(spec)
    return None if host is None else (spec, host)


def parse_env_list(specs: list[str]) -> list[list[str]]:
    return [list(kv) for spec in specs if (kv := parse_env_spec(spec)) is not None]


def merge_env(base: list[list[str]], overrides: list[list[str]]) -> list[list[str]]:
    """src/cli/vm_common.rs merge_env_overrides: a key set again moves to the end."""
    env = [list(kv) for kv in base]
    for key, value in overrides:
        env = [kv for kv in env if kv[0] != key]
        env.append([key, value])
    return env


# src/cli/machine.rs parse_cli_secret_refs and src/secrets.rs validate_ref: GUEST=HOST_VAR /
# GUEST=/abs/path, keyed (and so resolved) in name order.
def parse_secret_refs(secret_env: list[str], secret_file: list[str]) -> dict[str, dict[str, str]]:
    refs: dict[str, dict[str, str]] = {}
    for flag, specs, kind in (("--secret-env", secret_env, "env"),
                              ("--secret-file", secret_file, "file")):
        for spec in specs:
            key, eq, value = spec.partition("=")
            if not eq:
                raise config_err(flag, f"expected KEY=VALUE, got '{spec}'")
            if not key:
                raise config_err(flag, f"empty secret name in '{spec}'")
            if kind == "file" and not value.startswith("/"):
                raise config_err(
                    flag,
                    f"secret '{key}': from_file path '{value}' is relative; absolute paths are "
                    "required",
                )
            if key in refs:
                raise config_err(flag, f"secret '{key}' specified more than once")
            refs[key] = {kind: value}
    return dict(sorted(refs.items()))


MAX_FROM_FILE_BYTES = 1024 * 1024  # src/secrets.rs


def resolve_secret_refs(refs: dict[str, dict[str, str]]) -> list[list[str]]:
    """src/secrets.rs resolve_refs_to_env: on this host, now; the first failure names its key."""
    resolved = []
    for key, ref in sorted(refs.items()):
        value: str | None
        if "env" in ref:
            value = os.environ.get(ref["env"])
            failure = "env_unset"
        else:
            failure = "file_read_failed"
            try:
                fd = os.open(ref["file"], os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as f:
                    data = f.read(MAX_FROM_FILE_BYTES + 1)
                if len(data) > MAX_FROM_FILE_BYTES:
                    value, failure = None, "file_too_large"
                else:
                    value = data.decode().rstrip("\r\n")
            except (OSError, UnicodeDecodeError):
                value = None
        if value is None:
            raise config_err(f"resolve secret '{key}'", failure)
        resolved.append([key, value])
    return resolved


def cmd_create(store: Store, a: dict[str, Any]) -> int:
    # src/cli/machine.rs CreateCmd::run, then src/cli/vm_common.rs create_vm/build_vm_record.
    for flag in ("from", "smolfile", "init", "expose_socket", "mount_socket"):
        if a.get(flag):
            raise FakeSetupError(f"--{flag.replace('_', '-')} is not faked")
    longs = {f"--{o.long}" for o in CREATE.opts}
    stray = list(dict.fromkeys(w for w in a["command"] if w in longs))
    if stray:
        err(f"note: {', '.join(stray)} came after `--`, so "
            f"{'it was' if len(stray) == 1 else 'they were'} passed to the workload and did not "
            "configure the machine. Machine options go before `--`.")
    allow_cidr, net, dns_filter_hosts = resolve_egress_flags(a)
    net = net or bool(a.get("dns"))
    name = a["name"] or f"vm-{os.urandom(4).hex()}"
    image = image_local = None
    if a["image"] is not None:
        image, image_local = resolve_image(a["image"])
    labels: dict[str, str] = {}
    for entry in a.get("label") or []:
        key, eq, value = entry.partition("=")
        if not eq:
            raise config_err("--label", f"expected KEY=VALUE, got '{entry}'")
        if not key:
            raise config_err("--label", f"label key cannot be empty (in '{entry}')")
        labels[key] = value
    secret_refs = parse_secret_refs(a["secret_env"], a["secret_file"])
    cpus = a["cpus"] if a["cpus"] is not None else 4
    mem = a["mem"] if a["mem"] is not None else 8192
    # src/data/resources.rs VmResources::validate
    if cpus == 0:
        raise config_err("validate resources", "CPU count must be at least 1")
    if cpus > 16:
        err(f"warning: requested {cpus} vCPUs but the hypervisor supports at most 16; the VM "
            "will run with 16 vCPUs")
    if mem < 64:
        raise config_err("validate resources", f"memory must be at least 64 MiB (got {mem} MiB)")
    if a["storage"] == 0:
        raise config_err("validate resources", "storage disk size must be greater than 0 GiB")
    if a["overlay"] == 0:
        raise config_err("validate resources", "overlay disk size must be greater than 0 GiB")
    # src/network/launch.rs validate_requested_network_backend (f8f7d148, v1.1.3): an egress
    # policy is enforced only by the virtio-net gateway, so an explicit `--net-backend tsi` beside
    # one is refused (the other refusals there, about ports and --network, are not faked).
    if since(1, 1, 3) and a["net_backend"] == "tsi" and (allow_cidr or dns_filter_hosts):
        raise config_err(
            "egress",
            "egress policy (--allow-cidr/--allow-host/--outbound-localhost-only) requires the "
            "virtio-net backend; TSI does not enforce it. Remove --net-backend tsi or set it to "
            "virtio-net",
        )
    validate_name(name)
    rec = {
        "name": name,
        "state": "created",
        "pid": None,
        "cpus": cpus,
        "memory_mib": mem,
        "image": image,
        "image_key": a["image"],
        "image_local": image_local,
        "image_config": None,
        "init_completed": False,
        "created_at": int(time.time()),
        "storage_gb": a["storage"],
        "overlay_gb": a["overlay"],
        "volumes": a["volume"],
        "ports": a["port"],
        "network": net,
        "allowed_cidrs": allow_cidr,
        "dns_filter_hosts": dns_filter_hosts,
        "network_name": a.get("network"),
        "init": a["init"],
        "env": parse_env_list(a["env"]),
        "secret_refs": secret_refs,
        "workdir": a["workdir"],
        "labels": labels,
        "cmd": a["command"],
        "gpu": bool(a["gpu"]),
        "network_backend": a["net_backend"],
    }
    # src/config.rs VmRecord::validate_image_fetchable (v1.7.3, 57e77e5e): the guest pulls, so a
    # registry image on a machine without network can never be pulled.
    if since(1, 7, 3) and image is not None and not image_local and not has_network(rec):
        raise config_err(
            "create machine",
            f"image '{image}' must be pulled from a registry, but this machine has no network, "
            "so the pull can never succeed. Add --net (or publish a port with -p, or set an "
            "egress policy with --allow-cidr/--allow-host). To keep the machine "
            "network-isolated, supply the image locally instead: "
            f"`docker save {image} | smolvm machine create --image - ...`",
        )
    fault_delay("create")
    with store.locked():
        # CreateVmReservation::reserve
        if store.load(name) is not None or env_flag("FAKE_SMOLVM_CREATE_COLLIDE"):
            raise config_err(
                "create machine", f"machine '{name}' already exists or is being created"
            )
        store.save(rec)
    # vm_common::print_create_success
    out(f"Created machine: {name}")
    out(f"  CPUs: {cpus}, Memory: {mem} MiB")
    if a["volume"]:
        out(f"  Mounts: {len(a['volume'])}")
    if a["port"]:
        out(f"  Ports: {len(a['port'])}")
    if a["init"]:
        out(f"  Init commands: {len(a['init'])}")
    out(f"\nUse 'smolvm machine start --name {name}' to start the machine")
    out(f"Then use 'smolvm machine exec --name {name} -- <command>' to run commands")
    return 0


def pull_image(
    image: str, key: str, rec: dict[str, Any], egress: dict[str, Any] | None = None
) -> dict[str, Any]:
    """src/cli/mod.rs pull_with_progress around the guest's crane pull (crates/smolvm-agent/src/
    storage.rs pull_image_with_progress_and_auth): progress on stderr, the image's config back."""
    sys.stderr.write(f"Pulling image {image}...")
    sys.stderr.flush()
    conf = image_config(key)
    failure = None
    if not has_network(rec):
        # Before v1.7.3 such a machine could be created; its pull fails in the guest's DNS.
        failure = (
            f"crane manifest failed: Error: fetching manifest {image}: Get "
            '"https://index.docker.io/v2/": dial tcp: lookup index.docker.io on 1.1.1.1:53: '
            "dial udp 1.1.1.1:53: connect: network is unreachable\n"
        )
    elif (blocked := pull_blocked(image, egress)) is not None:
        failure = f"crane manifest failed: {blocked}\n"
    elif conf is None:
        failure = (
            f"crane manifest failed: Error: fetching manifest {image}: GET "
            f"https://index.docker.io/v2/{image}/manifests/latest: MANIFEST_UNKNOWN: "
            "manifest unknown; unknown tag\n"
        )
    else:
        # Two layers: the agent reports each as a percentage, then "syncing".
        for percent in (50, 100):
            filled = percent // 5
            bar = "".join("=" if i < filled else ">" if i == filled else " " for i in range(20))
            sys.stderr.write(f"\rPulling image {image}... [{bar}] {percent}%")
            sys.stderr.flush()
        sys.stderr.write(f"\rPulling image {image}... [{'=' * 20}] 100% — syncing...")
    sys.stderr.write(f"\rPulling image {image}... done.{' ' * 30}\n")
    sys.stderr.flush()
    if failure is not None:
        raise agent_err("pull image", failure)
    assert conf is not None
    return conf


def cmd_start(store: Store, a: dict[str, Any]) -> int:
    # src/cli/machine.rs StartCmd::run, src/cli/vm_common.rs start_vm_named_with_db and
    # start_vm_default.
    name = a["name"] or "default"
    with store.locked():
        rec = store.load(name)
        if rec is None:
            if a["name"] is not None:
                raise SmolvmError(f"vm not found: {name}")
            rec = {
                "name": "default", "state": "created", "pid": None, "cpus": 4,
                "memory_mib": 8192, "image": None, "created_at": int(time.time()),
            }
            store.save(rec)
        if rec["state"] == "running":
            out(f"Machine '{name}' already running (PID: {rec['pid']})")
            return 0
    egress = launch_egress(rec)
    mounts = f" with {len(rec['volumes'])} mount(s)" if rec.get("volumes") else ""
    ports = f" and {len(rec['ports'])} port mapping(s)" if rec.get("ports") else ""
    err(f"Starting machine '{name}'{mounts}{ports}...")
    fault_delay("start")  # booting: the VM is not usable until start returns
    fail = env_flag("FAKE_SMOLVM_START_FAIL")
    if fail:
        store.update(name, state="failed", pid=None)
        raise SmolvmError(
            fail if fail != "1"
            # src/agent/manager.rs wait_for_ready, wrapped by start_vm_named_with_db
            else "agent operation failed: start machine: agent operation failed: wait for ready: "
            "agent did not become ready within 30 seconds"
        )
    # Not smolvm's: the policy this boot enforces, kept for tests (smolvm holds it in the VM
    # process; `status --json` shows only `network`).
    fields: dict[str, Any] = {"egress": egress, "egress_floor": launch_floor(rec, egress)}
    if rec.get("image") and not rec.get("init_completed"):
        if rec.get("image_local"):
            # A local archive or rootfs dir is mounted in, not pulled; its config comes with it.
            fields["image_config"] = image_config(rec.get("image_key") or rec["image"])
        else:
            err(f"Pulling {rec['image']}...")
            fields["image_config"] = pull_image(rec["image"], rec.get("image_key") or
                                                rec["image"], rec, egress)
        fields["init_completed"] = True
    pid = os.getpid()
    out(f"Machine '{name}' running (PID: {pid})")
    store.update(name, state="running", pid=pid, **fields)
    return 0


def cmd_stop(store: Store, a: dict[str, Any]) -> int:
    # src/cli/vm_common.rs stop_vm_named
    name = a["name"] or "default"
    fault_delay("stop")
    with store.locked():
        rec = get(store, name)
        if rec["state"] != "running":
            out(f"Machine '{name}' is not running (state: {rec['state']})")
            return 0
        out(f"Stopping machine '{name}'...")
        rec["state"], rec["pid"] = "stopped", None
        store.save(rec)
    out(f"Stopped machine: {name}")
    return 0


def cmd_delete(store: Store, a: dict[str, Any]) -> int:
    # src/cli/vm_common.rs delete_vm: stops a running machine, then asks unless -f.
    name = a["name"]
    fault_delay("delete")
    with store.locked():
        rec = get(store, name)
        if rec["state"] == "running":
            out(f"Stopping machine '{name}'...")
            rec["state"], rec["pid"] = "stopped", None
            store.save(rec)
    if not (a["force"] or a.get("cascade")):
        sys.stderr.write(f"Delete machine '{name}'? [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            out("Cancelled")
            return 0
    with store.locked():
        get(store, name)
        store.remove(name)
    out(f"Cleaning up data directory for vm: {name}")
    out(f"Deleted machine: {name}")
    return 0


def status_json(rec: dict[str, Any]) -> dict[str, Any]:
    # src/cli/vm_common.rs machine_status_json
    return {
        "name": rec["name"],
        "state": rec["state"],
        "cpus": rec["cpus"],
        "memory_mib": rec["memory_mib"],
        "pid": rec.get("pid") if rec["state"] == "running" else None,
        "mounts": len(rec.get("volumes") or []),
        "ports": len(rec.get("ports") or []),
        "created_at": rec["created_at"],
        "storage_gb": rec.get("storage_gb"),
        "overlay_gb": rec.get("overlay_gb"),
        "image": rec.get("image"),
        "entrypoint": [],
        "cmd": rec.get("cmd") or [],
        "ephemeral": False,
        "gpu": rec.get("gpu", False),
        "gpu_vram_mib": None,
        "cuda": False,
        "forkable": False,
        "cuda_fork_pool_size": None,
        "cuda_vram_limit_mib": None,
        "forkpoint_held": False,
        "labels": rec.get("labels") or {},
        "restart_policy": "never",
        "restart_max_retries": 0,
        "restart_count": 0,
        "health_cmd": None,
        "health_interval_secs": None,
        "health_timeout_secs": None,
        "health_retries": None,
        "health_startup_grace_secs": None,
        "network": rec.get("network", False),
    }


def cmd_ls(store: Store, a: dict[str, Any]) -> int:
    # src/cli/vm_common.rs list_vms
    fault_delay("ls")
    with store.locked():
        recs = store.all()
    if a["json"]:
        out(json.dumps([status_json(r) for r in recs], indent=2))
        return 0
    if not recs:
        out("No machines found")
        return 0
    head = ("NAME", "STATE", "CPUS", "MEMORY", "MOUNTS", "PORTS", "STORAGE", "OVERLAY")
    out("{:<20} {:<12} {:>5} {:>10} {:>7} {:>7} {:>8} {:>8}".format(*head))
    out("-" * 88)
    for r in recs:
        out("{:<20} {:<12} {:>5} {:>10} {:>7} {:>7} {:>8} {:>8}".format(
            r["name"][:18], r["state"], r["cpus"], f"{r['memory_mib']} MiB",
            len(r.get("volumes") or []), len(r.get("ports") or []),
            f"{r.get('storage_gb') or 20} GiB", f"{r.get('overlay_gb') or 10} GiB"))
    return 0


def cmd_status(store: Store, a: dict[str, Any]) -> int:
    # src/cli/vm_common.rs status_vm and status_vm_json
    name = a["name"] or "default"
    fault_delay("status")
    with store.locked():
        rec = store.load(name)
    if a["json"]:
        if rec is None:
            raise config_err("machine status", f"machine '{name}' not found")
        out(json.dumps(status_json(rec), indent=2))
        return 0
    if rec is None:
        if a["name"] is None:
            out("Machine 'default': not running")
            return 0
        raise SmolvmError(f"vm not found: {name}")
    if rec["state"] == "running":
        out(f"Machine '{name}': running (PID: {rec['pid']})")
    else:
        out(f"Machine '{name}': {rec['state']}")
    return 0


def running_machine(store: Store, explicit: str | None) -> dict[str, Any]:
    """src/cli/vm_common.rs ensure_running_and_connect: the record, or its errors."""
    name = explicit or "default"
    with store.locked():
        rec = store.load(name)
    if rec is None:
        if explicit is None:
            raise agent_err("connect", "machine 'default' not found")
        raise SmolvmError(f"vm not found: {name}")
    if rec["state"] != "running":
        hint = f"smolvm machine start --name {name}" if explicit else "smolvm machine start"
        raise agent_err("connect", f"machine '{name}' is not running. Use '{hint}' first.")
    return rec


# --------------------------------------------------------------------------- guest identity


class Identity:
    """Who a guest command runs as: crates/smolvm-agent/src/oci.rs ProcessIdentity."""

    def __init__(self, uid: int, gid: int, groups: list[int], home: str | None) -> None:
        self.uid, self.gid, self.groups, self.home = uid, gid, groups, home


def _passwd(path: str = "/etc/passwd") -> list[tuple[str, int, int, str]]:
    entries = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":", 6)
            if len(parts) < 7 or not parts[2].isdigit() or not parts[3].isdigit():
                continue
            entries.append((parts[0], int(parts[2]), int(parts[3]), parts[5]))
    return entries


def resolve_identity(user_spec: str | None) -> Identity:
    """oci.rs resolve_process_identity against this host's /etc/passwd and /etc/group (the
    fake's image rootfs is the host's)."""
    passwd = _passwd()
    groups = grp.getgrall()

    def extra(username: str | None, primary: int) -> list[int]:
        if username is None:
            return []
        found: list[int] = []
        for g in groups:
            if g.gr_gid != primary and username in g.gr_mem and g.gr_gid not in found:
                found.append(g.gr_gid)
        return found

    spec = (user_spec or "").strip()
    if not spec:
        root = next((e for e in passwd if e[0] == "root"), None)
        if root is None:
            return Identity(0, 0, [], "/root")
        return Identity(root[1], root[2], extra("root", root[2]), root[3])
    user, colon, group = spec.partition(":")
    if colon and not user:
        raise ValueError("invalid empty user in OCI image config")
    if colon and not group:
        raise ValueError("invalid empty group in OCI image config")
    if user.isdigit():
        entry = next((e for e in passwd if e[1] == int(user)), None)
        username, uid = (entry[0] if entry else None), int(user)
        primary, home = (entry[2], entry[3]) if entry else (None, None)
    else:
        entry = next((e for e in passwd if e[0] == user), None)
        if entry is None:
            raise ValueError(f"user '{user}' not found in container rootfs")
        username, uid, primary, home = entry[0], entry[1], entry[2], entry[3]
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            match = next((g for g in groups if g.gr_name == group), None)
            if match is None:
                raise ValueError(f"group '{group}' not found in container rootfs")
            gid = match.gr_gid
    else:
        gid = primary if primary is not None else 0
    if home is None and uid == 0:
        home = "/root"
    return Identity(uid, gid, extra(username, gid), home)


# A bare VM is smolvm's agent rootfs (scripts/build-agent-rootfs.sh: Alpine 3.19 minirootfs plus
# util-linux, crun, …) with root as its only login. The guest command sees these account files
# instead of the host's, so `runuser -u node`/`su node` fail there as they would in that VM.
BARE_PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
BARE_GROUP = "root:x:0:root\n"
CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x00020000, 4096, 16384, 1 << 18


def bare_accounts(store: Store) -> tuple[bytes, bytes] | None:
    """The account files a bare guest gets, or None when this fake cannot give them (not root:
    no mount namespace; such a guest cannot switch users anyway)."""
    if os.geteuid() != 0:
        return None
    root = os.path.join(store.root, "bare-rootfs")
    os.makedirs(root, exist_ok=True)
    paths = []
    for fn, text in (("passwd", BARE_PASSWD), ("group", BARE_GROUP)):
        path = os.path.join(root, fn)
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        paths.append(os.fsencode(path))
    return paths[0], paths[1]


class _Mounts:
    """unshare(2)/mount(2) through ctypes, loaded before fork (no imports in the child)."""

    def __init__(self) -> None:
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.get_errno = ctypes.get_errno

    def _check(self, rc: int) -> None:
        if rc != 0:
            e = self.get_errno()
            raise OSError(e, os.strerror(e))

    def private_accounts(self, passwd: bytes, group: bytes) -> None:
        self._check(self.libc.unshare(CLONE_NEWNS))
        self._check(self.libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
        self._check(self.libc.mount(passwd, b"/etc/passwd", None, MS_BIND, None))
        self._check(self.libc.mount(group, b"/etc/group", None, MS_BIND, None))


# --------------------------------------------------------------------------- exec


def exec_spec() -> Spec:
    opts = [
        Opt("name", None, "NAME"),
        Opt("workdir", "w", "DIR"),
        Opt("env", "e", "KEY=VALUE", multiple=True),
        Opt("secret-env", None, "GUEST_VAR=HOST_VAR", multiple=True),
        Opt("secret-file", None, "GUEST_VAR=PATH", multiple=True),
        Opt("timeout", None, "DURATION", parse=duration),
        Opt("interactive", "i"),
        Opt("tty", "t"),
        Opt("stream"),
        Opt("detach", "d", since=(1, 3, 0)),
        # From release notes, not source: smolvm PR #1148 ("Add a user directive to the Smolfile
        # and a --user flag", released in 1.14.0 per issue #1142) and #1172 (the exec API takes
        # the same user "the CLI and Smolfile already do"). The PRs spell it `--user` and show
        # no short form and no metavar: `<USER>` is the fake's.
        Opt("user", None, "USER", since=(1, 14, 0)),
    ]
    return Spec(
        usage=f"{MACHINE} exec [OPTIONS] <COMMAND>...",
        about="Run a command directly in the VM (not in a container)",
        opts=opts,
        required=("command",),
        trailing="command",
        conflicts=(("detach", "interactive"), ("detach", "tty"), ("detach", "stream")),
    )


EXEC = exec_spec()


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return rows, cols


def start_watcher() -> int:
    """Fork a watcher that SIGKILLs the guest's process group if this process dies unannounced.

    The real agent kills the guest when the client disconnects; here "the client" is this
    process, so a watcher holding the read end of a pipe sees EOF when we die (even by SIGKILL).
    Returns the write end. Protocol: the guest writes `PID\n` to it between fork and exec (so no
    guest ever runs unwatched); we write `x` when the session ended normally.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the watcher
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, r)
            os.closerange(r + 1, 65536)
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            buf = b""
            while b"x" not in buf:
                chunk = os.read(r, 64)
                if not chunk:  # every writer is gone without saying "done"
                    if b"\n" in buf:
                        with contextlib.suppress(OSError):
                            os.killpg(int(buf.split(b"\n")[0]), signal.SIGKILL)
                    break
                buf += chunk
        finally:
            os._exit(0)
    os.close(r)
    return w


def write_all(fd: int, data: bytes) -> None:
    """Write everything, waiting for writability when fd is non-blocking (shared O_NONBLOCK)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


class VmLost(Exception):
    """FAKE_SMOLVM_DIE_AFTER fired: the VM is gone under the session."""


# The VM's death as smolvm reports it, from 1.14.1 on. From release notes, not source: smolvm PR
# #1154 ("Report how the VM process ended when a command fails because it died", merged
# 2026-09-06, the day 1.14.0 and 1.14.1 were cut; which release first carries it is not known,
# the fake takes 1.14.1) says only "A VM killed by a signal now says so instead of reporting a
# closed connection". Its text is not shown anywhere, so this one is made up, on purpose unlike
# every text of smolvm 1.9.3: a client can only learn what happened by asking for the machine's
# state. Every exec mode prints it (the PR names no mode) as smolvm's errors are printed, `Error: `
# and exit 1 (src/main.rs).
VM_KILLED_SINCE = (1, 14, 1)


def vm_lost_error(s: Session, old: SmolvmError) -> SmolvmError:
    """The error a session's client reports when the VM died under it (`old`: 1.9.3's)."""
    if since(*VM_KILLED_SINCE):
        return SmolvmError(f"the VM of machine '{s.machine}' ended: killed by signal 9 (SIGKILL)")
    return old


class Session:
    """One guest process and the copying around it, in one of smolvm's exec modes."""

    def __init__(
        self,
        store: Store,
        machine: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        mode: str,  # "buffered" | "stream" | "interactive" | "tty"
        image: bool,  # image machine (crun) or bare VM (agent)
        timeout: float | None,
        die_after: float | None,
        identity: Identity | None = None,  # None: run as this process
        accounts: tuple[bytes, bytes] | None = None,  # bare VM account files
    ) -> None:
        self.store, self.machine, self.argv, self.env, self.cwd = store, machine, argv, env, cwd
        self.mode, self.image, self.timeout, self.die_after = mode, image, timeout, die_after
        self.identity, self.accounts = identity, accounts
        self.child: subprocess.Popen[bytes] | None = None
        # The VM this session runs in: the boot that `start` recorded (its pid).
        rec = store.load(machine)
        self.boot = rec.get("pid") if rec else None
        self.checked = time.monotonic()

    def op(self) -> str:
        # src/agent/client.rs: the operation names its errors carry.
        if self.mode in ("interactive", "tty"):
            return "run interactive" if self.image else "vm exec interactive"
        if self.mode == "stream":
            return "run streaming" if self.image else "streaming exec"
        return "run command" if self.image else "vm exec"

    def spawn(self, ctty: bool = False, **kw: Any) -> int:
        """Start the guest (in its own session; `ctty`: take stdin as controlling tty) and its
        watcher; returns the watcher's pipe for finish().

        Termination signals are blocked in between so that no guest can outlive us unwatched.
        """
        mounts = _Mounts() if self.accounts is not None else None
        ident = self.identity
        accounts = self.accounts

        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FATAL_SIGNALS)
        try:
            done = start_watcher()

            def child_setup() -> None:
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                if ctty:
                    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
                os.write(done, f"{os.getpid()}\n".encode())
                if mounts is not None and accounts is not None:
                    mounts.private_accounts(*accounts)
                if ident is not None:
                    os.setgroups(ident.groups)
                    os.setgid(ident.gid)
                    os.setuid(ident.uid)

            try:
                self.child = subprocess.Popen(
                    self.argv, env=self.env, cwd=self.cwd, start_new_session=True,
                    preexec_fn=child_setup, **kw,
                )
            except OSError as e:
                os.write(done, b"x")
                os.close(done)
                detail = os_error_text(e)
                if self.mode == "buffered":
                    # handle_vm_exec; an interactive/streaming spawn sends the bare io::Error.
                    detail = f"failed to spawn command: {detail}"
                raise agent_err(self.op(), detail) from None
            except subprocess.SubprocessError as e:
                os.write(done, b"x")
                os.close(done)
                raise FakeSetupError(f"could not set up the guest process: {e}") from None
            return done
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def lose_vm(self, record: bool = True) -> NoReturn:
        """The VM dies under the session (`record`: by itself, FAKE_SMOLVM_DIE_AFTER, so the
        machine is marked stopped here; else a `stop` or `delete` killed it and said so)."""
        assert self.child is not None
        with contextlib.suppress(OSError):
            os.killpg(self.child.pid, signal.SIGKILL)
        self.child.wait()
        if record:
            self.store.update(self.machine, state="stopped", pid=None)
        raise VmLost()

    def vm_stopped(self, now: float) -> bool:
        """Whether the VM this session started in was stopped meanwhile (`stop`, `delete`, or
        a stop and a new `start`): AgentManager::stop kills the VM process (src/agent/
        manager.rs stop_vm_process), and every exec's connection to it drops. Looked at once
        per POLL_TIMEOUT_MS at most, as often as smolvm's client wakes when idle."""
        if now < self.checked + POLL_TIMEOUT_MS / 1000:
            return False
        self.checked = now
        rec = self.store.load(self.machine)
        return rec is None or rec.get("state") != "running" or rec.get("pid") != self.boot

    def finish(self, done_fd: int) -> None:
        """End the session: a guest still running here (an error path) is killed like smolvm's
        agent kills it on disconnect; then the watcher is released."""
        assert self.child is not None
        if self.child.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.child.pid, signal.SIGKILL)
            self.child.wait()
        os.write(done_fd, b"x")
        os.close(done_fd)

    def status(self) -> int:
        # crates/smolvm-agent/src/process.rs exit_code_from_status: 128+N for signal N.
        assert self.child is not None
        rc = self.child.returncode
        return 128 - rc if rc < 0 else rc & 0xFF


def run_loop(
    s: Session,
    stdin_to: int | None,
    on_stdin_eof: Callable[[], None],
    outputs: dict[int, Callable[[bytes], None]],
    on_tick: Callable[[], None] | None = None,
    wake_fd: int | None = None,
) -> int | None:
    """Copy until the child exits and its output is drained; None when the timeout fired.

    stdin_to: where host stdin goes (None: stdin not read). outputs: fd -> sink (a sink that
    returns False stops reading that fd).
    """
    assert s.child is not None
    start = time.monotonic()
    pending_in = b""
    stdin_open = stdin_to is not None
    live = dict(outputs)
    exited_at: float | None = None
    while True:
        rlist = list(live)
        wlist = []
        if stdin_open and not pending_in:
            rlist.append(0)
        if pending_in and stdin_to is not None:
            wlist.append(stdin_to)
        if wake_fd is not None:
            rlist.append(wake_fd)
        now = time.monotonic()
        deadlines = [now + POLL_TIMEOUT_MS / 1000]
        if s.timeout is not None:
            deadlines.append(start + s.timeout)
        if s.die_after is not None:
            deadlines.append(start + s.die_after)
        if exited_at is not None:
            deadlines.append(exited_at + DRAIN_IDLE_S)
        r, w, _ = select.select(rlist, wlist, [], max(0.0, min(deadlines) - now))
        if on_tick is not None:
            on_tick()
        if wake_fd is not None and wake_fd in r:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_fd, 512)
        if 0 in r:
            try:
                data = os.read(0, CHUNK)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                stdin_open = False
                on_stdin_eof()
            elif data:
                pending_in += data
        if pending_in and stdin_to is not None and stdin_to in w:
            try:
                n = os.write(stdin_to, pending_in)
                pending_in = pending_in[n:]
            except BlockingIOError:
                pass
            except OSError:  # the guest closed its input: drop what it will never read
                pending_in = b""
                stdin_open = False
        got_output = False
        for fd in list(live):
            if fd not in r:
                continue
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError:  # EIO on a pty master: every slave is closed
                data = b""
            if data:
                got_output = True
                if live[fd](data) is False:
                    del live[fd]
                    os.close(fd)
            else:
                del live[fd]
        now = time.monotonic()
        if exited_at is None and s.child.poll() is not None:
            exited_at = now
        if exited_at is not None:
            if got_output:
                exited_at = now
            if not live or now >= exited_at + DRAIN_IDLE_S:
                return s.status()
            continue
        if s.die_after is not None and now >= start + s.die_after:
            s.lose_vm()
        if s.vm_stopped(now):
            s.lose_vm(record=False)
        if s.timeout is not None and now >= start + s.timeout:
            with contextlib.suppress(OSError):
                os.killpg(s.child.pid, signal.SIGKILL)
            s.child.wait()
            return None


def set_nonblocking(fd: int) -> int:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return flags


def exec_buffered(s: Session) -> int:
    """No -i/-t/--stream: crates/smolvm-agent/src/main.rs handle_vm_exec (bare) or the crun
    exec of storage.rs run_exec_in_container (image): stdin /dev/null, output collected, then
    src/cli/vm_common.rs print_output_and_exit writes all stdout, then all stderr."""
    done = s.spawn(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert s.child is not None
    assert s.child.stdout is not None and s.child.stderr is not None
    bufs = {1: bytearray(), 2: bytearray()}

    def sink(buf: bytearray) -> Callable[[bytes], bool]:
        def take(data: bytes) -> bool:
            # handle_vm_exec reads one byte past the cap, then stops reading.
            buf.extend(data)
            return s.image or len(buf) <= MAX_EXEC_OUTPUT

        return take

    try:
        rc = run_loop(s, None, lambda: None, {s.child.stdout.fileno(): sink(bufs[1]),
                                               s.child.stderr.fileno(): sink(bufs[2])})
    except VmLost:
        # The client's read of the reply fails (src/agent/client.rs read_exact_retry).
        raise vm_lost_error(s, SmolvmError("io operation failed: connection closed")) from None
    finally:
        s.finish(done)
    if rc is None:
        rc = 124
        if s.image:
            # storage.rs run_exec_in_container: WaitResult::TimedOut
            bufs[2].extend(f"\ncommand timed out after {int(s.timeout * 1000)}ms".encode()
                           if s.timeout else b"")
    if not s.image and (len(bufs[1]) > MAX_EXEC_OUTPUT or len(bufs[2]) > MAX_EXEC_OUTPUT):
        raise agent_err(
            s.op(),
            f"command output exceeded {MAX_EXEC_OUTPUT} bytes and was truncated. Use streaming "
            "exec (exec_stream / execStream) for large output.",
        )
    write_all(1, bytes(bufs[1]))
    write_all(2, bytes(bufs[2]))
    return rc


def exec_piped(s: Session) -> int:
    """`-i` (stdin forwarded, EOF closes the guest's stdin) and `--stream` (stdin never fed):
    src/agent/client.rs interactive_session / vm_exec_streaming_with."""
    done = s.spawn(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert s.child is not None
    assert s.child.stdin and s.child.stdout and s.child.stderr
    child_in = s.child.stdin.fileno()
    set_nonblocking(child_in)
    saved_flags = None
    if s.mode == "interactive":
        saved_flags = set_nonblocking(0)
    total = [0]

    class CapReached(Exception):
        pass

    def sink(fd: int) -> Callable[[bytes], None]:
        def take(data: bytes) -> None:
            write_all(fd, data)
            if s.mode == "stream":
                # client.rs collect_exec_events_inner: relay, then stop at the cap.
                total[0] += len(data)
                if total[0] >= MAX_EXEC_OUTPUT:
                    raise CapReached()

        return take

    def close_input() -> None:
        assert s.child is not None and s.child.stdin is not None
        with contextlib.suppress(OSError):
            s.child.stdin.close()

    try:
        rc = run_loop(
            s,
            child_in if s.mode == "interactive" else None,
            close_input,
            {s.child.stdout.fileno(): sink(1), s.child.stderr.fileno(): sink(2)},
        )
    except VmLost:
        if s.mode == "stream" and not since(*VM_KILLED_SINCE):
            # ExecEventPrinter prints the event's error and exits 1.
            err("error: io operation failed: connection closed")
            return 1
        raise vm_lost_error(s, agent_err(s.op(), "connection to VM lost")) from None
    except CapReached:
        err(f"error: streaming output exceeded {MAX_EXEC_OUTPUT} byte cap; exec terminated "
            "(output truncated)")
        return 1
    finally:
        s.finish(done)
        if saved_flags is not None:
            fcntl.fcntl(0, fcntl.F_SETFL, saved_flags)
    return 124 if rc is None else rc


def make_raw(attrs: list[Any]) -> list[Any]:
    """src/agent/terminal.rs RawModeGuard::new, flag for flag (not cfmakeraw)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    oflag &= ~termios.OPOST
    cflag |= termios.CS8
    lflag &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def exec_tty(s: Session) -> int:
    """`-t`/`-it`: src/agent/client.rs interactive_session with a guest pty."""
    delay = float(os.environ.get("FAKE_SMOLVM_TTY_DELAY", "0.2"))
    time.sleep(delay)  # connecting to the agent and spawning takes a while; SIGWINCH is ignored
    master, slave = os.openpty()
    set_winsize(master, 24, 80)  # the agent's open_pty(80, 24)
    if s.identity is not None and os.geteuid() == 0:
        os.fchown(slave, s.identity.uid, s.identity.gid)  # the console belongs to the guest user

    try:
        done = s.spawn(ctty=True, stdin=slave, stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    # "Started" received: raw mode on a tty stdin with TCSAFLUSH, which drops whatever was typed
    # (or written into the tty) before this point. Only then is stdin read at all.
    saved_attrs = None
    if os.isatty(0):
        saved_attrs = termios.tcgetattr(0)
        termios.tcsetattr(0, termios.TCSAFLUSH, make_raw(saved_attrs))
    size = get_winsize(0)
    if size is not None:
        set_winsize(master, *size)
    winch = [False]
    wake_r, wake_w = os.pipe()
    set_nonblocking(wake_r)
    set_nonblocking(wake_w)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def on_winch(signum: int, frame: Any) -> None:
        winch[0] = True

    signal.signal(signal.SIGWINCH, on_winch)

    def tick() -> None:
        # After every poll return: collapse pending SIGWINCHs into one resize from fd 0.
        if winch[0]:
            winch[0] = False
            new = get_winsize(0)
            if new is not None:
                set_winsize(master, *new)

    def veof() -> None:
        # Host EOF: the agent writes VEOF twice into the guest pty (since v0.8.1).
        with contextlib.suppress(OSError):
            write_all(master, b"\x04\x04")

    saved_flags = set_nonblocking(0)
    set_nonblocking(master)
    try:
        rc = run_loop(s, master, veof, {master: lambda b: write_all(1, b)}, tick, wake_r)
    except VmLost:
        raise vm_lost_error(s, agent_err(s.op(), "connection to VM lost")) from None
    finally:
        s.finish(done)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        fcntl.fcntl(0, fcntl.F_SETFL, saved_flags)
        if saved_attrs is not None:
            termios.tcsetattr(0, termios.TCSAFLUSH, saved_attrs)
        os.close(master)
    return 124 if rc is None else rc


def image_user_applies(mode: str) -> bool:
    """Whether smolvm honours the image's USER for this exec mode in the faked release: the
    interactive path (-i, -t and --stream, which is interactive without a tty) since v1.3.0
    (5bbffccf, crates/smolvm-agent/src/main.rs ResolvedLaunch), captured exec since v1.6.0
    (957bd755, run_in_keepalive_container's crun exec --user)."""
    if mode in ("interactive", "tty", "stream"):
        return since(1, 3, 0)
    return since(1, 6, 0)


def cmd_exec(store: Store, a: dict[str, Any]) -> int:
    # src/cli/machine.rs ExecCmd::run, in its order.
    fault_delay("exec")
    rec = running_machine(store, a["name"])
    kills = env_flag("FAKE_SMOLVM_KILL_EXECS")
    if kills:
        with store.locked():
            n = store.bump("exec_kills")
        if n <= int(kills):
            return 137  # SIGKILLed during bring-up: the command never got to run
    cli_env = parse_env_list(a["env"])
    workdir = a["workdir"] or rec.get("workdir")
    # The record keeps the pairs `create -e` resolved; a test may seed "K=V" strings instead.
    record_env = [kv.split("=", 1) if isinstance(kv, str) else list(kv)
                  for kv in rec.get("env") or []]
    record_env += resolve_secret_refs(rec.get("secret_refs") or {})
    record_env += resolve_secret_refs(parse_secret_refs(a["secret_env"], a["secret_file"]))
    tty = bool(a["tty"])
    mode = (
        "tty" if tty
        else "interactive" if a["interactive"]
        else "stream" if a["stream"]
        else "buffered"
    )
    is_image = bool(rec.get("image"))
    requested_user = a.get("user")
    accounts = None
    env_pairs: list[list[str]] = []
    if is_image:
        conf = rec.get("image_config") or image_config(rec.get("image_key") or rec["image"]) or {}
        # vm_common::resolve_image_runtime_defaults: image ENV < record env + secrets < -e;
        # -w, else the machine's workdir, else the image's WorkingDir.
        image_env = [list(kv) for spec in conf.get("env") or []
                     if (kv := parse_env_spec(spec)) is not None]
        env_pairs = merge_env(image_env, merge_env(record_env, cli_env))
        workdir = workdir or conf.get("workdir")
        user = requested_user or (conf.get("user") if image_user_applies(mode) else None)
        try:
            identity = resolve_identity(user)
        except ValueError as e:
            raise agent_err(
                {"buffered": "run command", "stream": "run streaming"}.get(mode,
                                                                          "run interactive"),
                str(e),
            ) from None
        # crun exec: the exec's env plus PATH when missing (crun.rs ensure_path_in_env); crun sets
        # HOME from the user's passwd entry when the env has none (libcrun set_home_env).
        env = dict(env_pairs)
        env.setdefault("PATH", GUEST_PATH)
        if identity.home is not None:
            env.setdefault("HOME", identity.home)
    else:
        # A bare VM: the agent (root) spawns the command with its own environment
        # (src/agent/launcher.rs) plus the exec's.
        env = {"HOME": "/root", "PATH": GUEST_PATH, "TERM": GUEST_TERM}
        env.update(merge_env(record_env, cli_env))
        accounts = bare_accounts(store)
        if requested_user is not None and requested_user not in ("root", "0", "0:0"):
            # From release notes, not source (#1148): what `--user` does on a bare VM is not
            # shown. Its rootfs has root as its only account, so the fake refuses any other with
            # the text the image path gives for an unknown user (oci.rs, v1.9.3).
            raise agent_err(
                {"buffered": "vm exec", "stream": "streaming exec"}.get(
                    mode, "vm exec interactive"),
                f"user '{requested_user}' not found in container rootfs",
            )
        identity = resolve_identity(None)
    # src/agent/client.rs with_term_default (b27b52d7) looks at the env it sends (for an image
    # machine that includes the image's ENV); a bare VM's agent has TERM set anyway.
    sent = env_pairs if is_image else merge_env(record_env, cli_env)
    if tty and since(1, 7, 6) and "TERM" not in dict(sent):
        env["TERM"] = GUEST_TERM
    if os.geteuid() != 0:
        if identity.uid != os.geteuid():
            raise FakeSetupError(
                f"the guest runs as uid {identity.uid}; only a fake running as root can run it "
                "as that user (run the tests as root)"
            )
        identity = None
    die = env_flag("FAKE_SMOLVM_DIE_AFTER")
    s = Session(store, rec["name"], a["command"], env, workdir or "/", mode, is_image,
                a["timeout"], float(die) if die else None, identity, accounts)
    if a.get("detach"):
        s.mode = "buffered"
        done = s.spawn(
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.write(done, b"x")  # detached: the guest is meant to outlive this call
        assert s.child is not None
        out(str(s.child.pid))
        return 0
    if mode == "tty":
        return exec_tty(s)
    if mode == "buffered":
        return exec_buffered(s)
    return exec_piped(s)


SHELL = Spec(
    usage=f"{MACHINE} shell [OPTIONS]",
    about="Open an interactive shell in a machine (starts it if stopped)",
    opts=[Opt("name", "n", "NAME")],
)


def cmd_shell(store: Store, a: dict[str, Any]) -> int:
    # src/cli/machine.rs ShellCmd::run: exec -it -- /bin/sh (it does not start the machine).
    return cmd_exec(
        store,
        {
            "name": a["name"], "interactive": True, "tty": True, "env": [], "workdir": None,
            "timeout": None, "stream": False, "detach": False, "secret_env": [],
            "secret_file": [], "command": ["/bin/sh"],
        },
    )


# --------------------------------------------------------------------------- cp

CP = Spec(
    usage=f"{MACHINE} cp [OPTIONS] <SRC> <DST>",
    about="Copy files between host and machine",
    opts=[
        Opt("mode", None, "OCTAL", since=(1, 9, 0)),
        Opt("uid", None, "UID", parse=U32, since=(1, 9, 0)),
        Opt("gid", None, "GID", parse=U32, since=(1, 9, 0)),
    ],
    positionals=("src", "dst"),
    required=("src", "dst"),
)


def guest_path(op: str, path: str) -> str:
    """crates/smolvm-agent/src/main.rs normalize_guest_path. Rust's Path::components() drops a
    `.` that is not leading, and the path is made absolute first, so only `..` is refused."""
    def bad(reason: str) -> NoReturn:
        raise agent_err(op, f"invalid guest path {path}: {reason}")

    if not path:
        bad("path is empty")
    normalized = path if path.startswith("/") else "/" + path
    if ".." in normalized.split("/"):
        bad("parent traversal is not allowed")
    return normalized


def format_bytes(n: int) -> str:
    # src/cli/mod.rs format_bytes
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def progress_line(label: str, n: int, total: int | None, started: float) -> str:
    # src/cli/mod.rs ProgressBar::format_line (one final line: a transfer this small never
    # outlasts the 250 ms throttle).
    rate = f"{format_bytes(int(n / max(time.monotonic() - started, 0.001)))}/s"
    if total:
        pct = min(n * 100 / total, 100)
        return f"{label}: {format_bytes(n)} / {format_bytes(total)} ({pct:.1f}%, {rate})"
    return f"{label}: {format_bytes(n)} ({rate})"


def cmd_cp(store: Store, a: dict[str, Any]) -> int:
    # src/cli/machine.rs CpCmd::run (v1.9.0 added --mode/--uid/--gid, e432c7eb).
    src, dst = a["src"], a["dst"]
    if ":" in src:
        upload, (name, gpath), local = False, src.split(":", 1), dst
    elif ":" in dst:
        upload, (name, gpath), local = True, dst.split(":", 1), src
    else:
        raise config_err(
            "cp", "one of SRC or DST must use machine:path syntax (e.g., myvm:/workspace/file)"
        )
    mode, uid, gid = a.get("mode"), a.get("uid"), a.get("gid")
    if not upload and (mode is not None or uid is not None or gid is not None):
        raise config_err("cp", "--mode/--uid/--gid apply to uploads only (host -> machine)")
    fault_delay("cp")
    running_machine(store, name)
    started = time.monotonic()
    if upload:
        mode_bits = None
        if mode is not None:
            digits = mode[2:] if mode.startswith("0o") else mode
            try:
                mode_bits = int(digits, 8) if re.fullmatch(r"\+?[0-7]+", digits) else -1
            except ValueError:
                mode_bits = -1
            if not 0 <= mode_bits <= 0o7777:
                raise config_err("cp", f"invalid octal mode '{mode}' (expected e.g. 644)")
        try:
            fd = os.open(local, os.O_RDONLY)  # like File::open, a directory opens fine
        except OSError as e:
            raise agent_err("read local file", f"{local}: {os_error_text(e)}") from None
        chunks = []
        try:
            while chunk := os.read(fd, CHUNK):
                chunks.append(chunk)
        except OSError as e:
            raise agent_err("read source file", os_error_text(e)) from None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        op = "write file" if len(data) <= 1024 * 1024 else "begin streaming write"
        target = guest_path(op, gpath)
        parent = os.path.dirname(target) or "/"
        staging = os.path.join(parent, f".{os.path.basename(target)}.smolvm-upload-{os.getpid()}")
        try:
            os.makedirs(parent, exist_ok=True)
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            os.rename(staging, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise agent_err(op, f"failed to write {target}: {os_error_text(e)}") from None
        # install_file_atomic: rename, then the mode (best effort), then the owner (an error).
        if mode_bits is not None:
            with contextlib.suppress(OSError):
                os.chmod(target, mode_bits)
        if uid is not None or gid is not None:
            try:
                os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid)
            except OSError as e:
                raise agent_err(op, f"failed to chown {gpath}: {os_error_text(e)}") from None
        err(progress_line(f"Uploading {local} -> {gpath}", len(data), len(data), started))
        return 0
    target = guest_path("read file", gpath)
    try:
        lf = open(local, "wb")  # noqa: SIM115 — created before the agent answers, as smolvm does
    except OSError as e:
        raise agent_err("write local file", f"{local}: {os_error_text(e)}") from None
    with lf:
        try:
            with open(target, "rb") as g:
                if not os.path.isfile(target):
                    raise IsADirectoryError
                data = g.read()
        except IsADirectoryError:
            os.unlink(local)
            raise agent_err("read file", f"not a regular file: {gpath}") from None
        except OSError as e:
            os.unlink(local)
            raise agent_err("read file", f"failed to open {gpath}: {os_error_text(e)}") from None
        lf.write(data)
    err(progress_line(f"Downloading {gpath} -> {local}", len(data), None, started))
    return 0


# --------------------------------------------------------------------------- entry point


SUBCOMMANDS: dict[str, tuple[Spec, Callable[[Store, dict[str, Any]], int]]] = {
    "create": (CREATE, cmd_create),
    "start": (START, cmd_start),
    "stop": (STOP, cmd_stop),
    "delete": (DELETE, cmd_delete),
    "rm": (DELETE, cmd_delete),
    "ls": (LS, cmd_ls),
    "list": (LS, cmd_ls),
    "status": (STATUS, cmd_status),
    "exec": (EXEC, cmd_exec),
    "shell": (SHELL, cmd_shell),
    "sh": (SHELL, cmd_shell),
    "cp": (CP, cmd_cp),
}

TOP_USAGE = "smolvm <COMMAND>"
MACHINE_USAGE = "smolvm machine <COMMAND>"
TOP_HELP = f"""Build and run portable, self-contained virtual machines

Usage: {TOP_USAGE}

Commands:
  machine  Manage machines (create, start, stop, exec) [aliases: vm]
  help     Print this message or the help of the given subcommand(s)

Options:
  -h, --help     Print help
  -V, --version  Print version
"""


def log_call(state: str, argv: list[str]) -> None:
    line = json.dumps({"argv": argv, "pid": os.getpid(), "stdin_tty": os.isatty(0)})
    fd = os.open(os.path.join(state, "calls.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one O_APPEND write per call: no interleaving
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # die like a Rust program, no traceback
    state = os.environ.get("FAKE_SMOLVM_STATE")
    if state:
        os.makedirs(state, exist_ok=True)
        log_call(state, argv)
    try:
        if not argv:
            raise UsageError("'smolvm' requires a subcommand but one was not provided", TOP_USAGE)
        if argv[0] in ("-V", "--version"):
            out(f"smolvm {VERSION_TEXT}")
            return 0
        if argv[0] in ("-h", "--help"):
            sys.stdout.write(TOP_HELP)
            return 0
        if argv[0] not in ("machine", "vm"):
            raise UsageError(f"unrecognized subcommand '{argv[0]}'", TOP_USAGE)
        if len(argv) < 2:
            raise UsageError("'smolvm machine' requires a subcommand", MACHINE_USAGE)
        sub = argv[1]
        if sub in ("-h", "--help"):
            out("Manage machines\n\nUsage: " + MACHINE_USAGE + "\n\nCommands: "
                + ", ".join(SUBCOMMANDS))
            return 0
        if sub not in SUBCOMMANDS:
            raise UsageError(f"unrecognized subcommand '{sub}'", MACHINE_USAGE)
        spec, fn = SUBCOMMANDS[sub]
        args = parse(spec, argv[2:])
        args = {k.replace("-", "_"): v for k, v in args.items()}
        if not state:
            raise FakeSetupError("FAKE_SMOLVM_STATE is not set (a state directory)")
        canonical = {"rm": "delete", "list": "ls", "sh": "shell"}.get(sub, sub)
        injected = env_flag(f"FAKE_SMOLVM_FAIL_{canonical.upper()}")
        if injected:
            raise SmolvmError(injected)
        return fn(Store(state), args)
    except UsageError as e:
        sys.stderr.write(
            f"error: {e}\n\nUsage: {e.usage}\n\nFor more information, try '--help'.\n"
        )
        return 2
    except SmolvmError as e:
        err(f"Error: {e}")
        return 1
    except FakeSetupError as e:
        err(f"fake smolvm: {e}")
        return 70
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
