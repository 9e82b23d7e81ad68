"""A machine's network: open, off, or limited to an allow-list (smolvm's egress flags).

smolvm (0.5.0 and later; every release bottle supports) limits a machine's outbound traffic
with `machine create --allow-host NAME` and `--allow-cidr CIDR`; either implies `--net`.
What smolvm does with them (smol-machines/smolvm, tag v1.9.3):

- `--allow-cidr` is checked by clap (`parse_cidr`, src/smolfile.rs): a bad value is a usage
  error, exit 2.
- `--allow-host` is resolved on the host **at create** (`resolve_egress_flags`,
  src/cli/machine.rs); a name that does not resolve fails the create (exit 1). `start`
  resolves the names again and only warns on failure (`start_vm_named_with_db`,
  src/cli/vm_common.rs). A host also allows its subdomains.
- Any policy puts the machine on smolvm's virtio-net gateway (src/network/launch.rs, since
  1.1.3; `--net-backend tsi` beside one is refused). The gateway answers the guest's DNS
  (crates/smolvm-network/src/stack.rs): names on the list and under them are forwarded, others
  get NXDOMAIN; with CIDRs only every name is forwarded. Connections may only reach the allowed
  CIDRs, the addresses the names resolved to on the host, and the addresses learnt from allowed
  DNS answers (crates/smolvm-network/src/egress.rs). README.md, "Network egress", has the rest.
- A registry image is pulled inside the guest on first boot, through that filter. Since smolvm
  1.3.5 (commit aa99522a) smolvm lets that boot reach the image's registry by folding
  `registry_pull_hosts` (src/registry.rs) into the DNS allow-list, when the list names hosts
  at all. Bottle does the same on an older smolvm (`--allow-host` for those hosts), and
  wherever smolvm's fold would not work (see `plan`).

Every name and CIDR is checked here, before any smolvm call, once: what passed comes back as
`AllowedHost` / `AllowedCidr`, which check themselves when constructed and which a check hands
back at once (see bottle._validate).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bottle.errors import InvalidInputError, Message, Param

if TYPE_CHECKING:
    import ipaddress

__all__ = [
    "PULL_FOLD_SINCE",
    "AllowedCidr",
    "AllowedHost",
    "NetworkMode",
    "NetworkPolicy",
    "check_cidr",
    "check_cidrs",
    "check_host",
    "check_hosts",
    "plan",
    "registry_host",
    "registry_pull_hosts",
    "split_allow_list",
]

# src/agent/launcher.rs LaunchFeatures::allow_image_pull_egress, first in v1.3.5 (aa99522a).
PULL_FOLD_SINCE = (1, 3, 5)
# src/registry.rs DEFAULT_REGISTRY and the names registry_pull_hosts treats as Docker Hub.
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
_DOCKER_HUB_PULL = ("docker.io", "docker.com")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PREFIX = re.compile(r"[0-9]{1,3}")


class NetworkMode(str, enum.Enum):
    """What a machine may reach. Each mode is also its plain string."""

    #: Anything (smolvm `--net`).
    OPEN = "open"
    #: Nothing: no network device at all. A registry image cannot be pulled.
    OFF = "off"
    #: The agent provider's API hosts, plus `allow_hosts` / `allow_cidrs`.
    AGENT = "agent"
    #: Only `allow_hosts` / `allow_cidrs`.
    ALLOW = "allow"

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def parse(cls, value: object) -> NetworkMode:
        """A mode from its name; `True` is `open` and `False` is `off` (the old boolean)."""
        if isinstance(value, NetworkMode):
            return value
        if value is True:
            return cls.OPEN
        if value is False:
            return cls.OFF
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        valid = ", ".join(repr(m.value) for m in cls)
        raise InvalidInputError(
            f"unknown network {value!r}; use {valid}, True (open), False (off), a list of "
            "allowed hosts and CIDRs, or None (open for a registry image, off otherwise)"
        )

    @property
    def restricted(self) -> bool:
        """True for the allow-list modes (`agent`, `allow`)."""
        return self in (NetworkMode.AGENT, NetworkMode.ALLOW)


class AllowedHost(str):
    """An `--allow-host` value: a DNS name or an IP address. Constructing one checks it
    (`InvalidInputError`), as `ipaddress` types check theirs, so there is no unchecked one.

    A name is not resolved here (smolvm resolves it at create, and its failure is reported as
    smolvm's error). Refused: ports (smolvm allows every port of an allowed host), URLs,
    wildcards (a host already allows its subdomains), and anything that is not a name.
    """

    __slots__ = ()

    def __new__(cls, host: object) -> AllowedHost:
        if type(host) is cls:
            return host  # checked when it was made
        return super().__new__(cls, _check_host(host))


class AllowedCidr(str):
    """An `--allow-cidr` value in its normal form: constructing one checks it and normalises
    it as smolvm's `parse_cidr` does (`AllowedCidr("1.1.1.1") == "1.1.1.1/32"`).

    `ADDR/PREFIX` or a bare address (`/32` or `/128` added). Host bits are kept, as smolvm's
    `ipnet` keeps them (`10.1.2.3/8` stays so; it still means 10.0.0.0/8).
    """

    __slots__ = ()

    def __new__(cls, cidr: object) -> AllowedCidr:
        if type(cidr) is cls:
            return cidr
        return super().__new__(cls, _check_cidr(cidr))


def check_host(host: str) -> AllowedHost:
    """Check one `--allow-host` value (`AllowedHost(host)`); see `AllowedHost`."""
    return AllowedHost(host)


def check_cidr(cidr: str) -> AllowedCidr:
    """Check one `--allow-cidr` value; its normal form (`AllowedCidr(cidr)`)."""
    return AllowedCidr(cidr)


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    import ipaddress  # only where an allow-list is checked: not every command's start-up

    return ipaddress.ip_address(text)


def _check_host(host: object) -> str:
    if not isinstance(host, str):
        raise InvalidInputError(f"allowed host must be a string, not {type(host).__name__}")
    problem = None
    try:
        _ip_address(host)
    except ValueError:
        pass
    else:
        if "%" in host:
            problem = "an IPv6 zone (%…) is not accepted"
        else:
            return host
    bare = host[:-1] if host.endswith(".") else host
    if problem is not None:
        pass
    elif not host.strip():
        problem = "it is empty"
    elif "://" in host or "/" in host:
        problem = "give the host name only, not a URL or a path"
    elif ":" in host:
        problem = (
            "port suffixes are not supported (smolvm allows every port of an allowed host); "
            "give the name only"
        )
    elif host.startswith("*"):
        problem = (
            "wildcards are not needed: an allowed host also allows its subdomains "
            f"({bare.lstrip('*.')!r} covers them)"
        )
    elif len(bare) > 253:
        problem = "it is longer than 253 characters"
    elif not all(_LABEL.fullmatch(label) for label in bare.split(".")):
        problem = (
            "a host name is dot-separated labels of letters, digits, '-' and '_' (1 to 63 "
            "characters each, not starting or ending with '-')"
        )
    elif bare.rsplit(".", 1)[-1].isdigit():
        problem = "it looks like an IP address but is not one"
    if problem is not None:
        raise InvalidInputError(f"invalid allowed host {host!r}: {problem}")
    return host


def _check_cidr(cidr: object) -> str:
    if not isinstance(cidr, str):
        raise InvalidInputError(f"allowed CIDR must be a string, not {type(cidr).__name__}")
    addr, slash, prefix = cidr.partition("/")
    try:
        if "%" in addr:
            raise ValueError(cidr)
        ip = _ip_address(addr)
        if slash:
            if not _PREFIX.fullmatch(prefix) or int(prefix) > ip.max_prefixlen:
                raise ValueError(cidr)
            bits = int(prefix)
        else:
            bits = ip.max_prefixlen
    except ValueError:
        raise InvalidInputError(
            f"invalid allowed CIDR {cidr!r}: expected an address with an optional prefix "
            "length, like 10.0.0.0/8, 1.1.1.1 or 2001:db8::/32"
        ) from None
    return f"{ip}/{bits}"


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = item.lower().rstrip(".")
        if key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)


def check_hosts(hosts: Iterable[str] | None, what: str = "allow_hosts") -> tuple[str, ...]:
    """Check a list of hosts (not a bare string); duplicates (any case) are dropped."""
    if hosts is None:
        return ()
    if isinstance(hosts, (str, bytes)) or not isinstance(hosts, Iterable):
        kind = "a string" if isinstance(hosts, str) else type(hosts).__name__
        raise InvalidInputError(f"{what} must be a list of host names, not {kind}")
    return _unique(check_host(h) for h in hosts)


def check_cidrs(cidrs: Iterable[str] | None, what: str = "allow_cidrs") -> tuple[str, ...]:
    """Check a list of CIDRs (not a bare string); return their normal forms, deduplicated."""
    if cidrs is None:
        return ()
    if isinstance(cidrs, (str, bytes)) or not isinstance(cidrs, Iterable):
        kind = "a string" if isinstance(cidrs, str) else type(cidrs).__name__
        raise InvalidInputError(f"{what} must be a list of CIDRs, not {kind}")
    return tuple(dict.fromkeys(check_cidr(c) for c in cidrs))


def split_allow_list(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sort a mixed allow-list into (hosts, CIDRs): an address, or `ADDR/PREFIX`, is a CIDR
    (so it adds no name to smolvm's DNS allow-list); anything else must be a host name."""
    if isinstance(entries, str):
        raise InvalidInputError("an allow-list must be a list of hosts and CIDRs, not a string")
    hosts, cidrs = [], []
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidInputError(
                f"allow-list entries must be strings, not {type(entry).__name__}"
            )
        try:
            _ip_address(entry.partition("/")[0])
        except ValueError:
            hosts.append(entry)
        else:
            cidrs.append(entry)
    return check_hosts(hosts), check_cidrs(cidrs)


def registry_host(image: str) -> str:
    """The registry smolvm pulls `image` from (src/registry.rs `extract_registry`).

    The part before the first `/` when it holds a `.` or a `:`, else Docker Hub.
    """
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first):
        return first
    return "docker.io"


def registry_pull_hosts(image: str) -> tuple[str, ...]:
    """The hosts a registry pull of `image` needs, as allow-host names.

    smolvm's `registry_pull_hosts` (src/registry.rs): Docker Hub → `docker.io`, `docker.com`
    (its API, auth and CDN hosts are their subdomains); `*.smolmachines.com` →
    `smolmachines.com`; any other registry → its host name. Unlike smolvm's, a port is dropped
    (`host:5000` is no DNS name; smolvm's own fold keeps it and never matches).
    """
    host = registry_host(image)
    if host in _DOCKER_HUB:
        return _DOCKER_HUB_PULL
    if host.endswith("smolmachines.com"):
        return ("smolmachines.com",)
    if host.startswith("["):
        return (host[1:].partition("]")[0],)
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host,)


@dataclass(frozen=True)
class NetworkPolicy:
    """The network a machine is created with: the mode and, for an allow-list, its entries.

    `allow_hosts` and `allow_cidrs` are what goes on smolvm's create command line (one
    `--allow-host` / `--allow-cidr` each, `--net` only for `open`). `pull_hosts` are
    the image's registry hosts that smolvm itself lets the first boot reach (smolvm 1.3.5 and
    later); a bottle's machine boots once, so they stay reachable for the whole session.
    """

    mode: NetworkMode
    allow_hosts: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    pull_hosts: tuple[str, ...] = ()

    def reaches(self, host: str) -> bool:
        """Whether the machine may reach `host` for its whole life: always with `open`; with an
        allow-list, when an allowed name is `host` or a domain above it (smolvm allows a name's
        subdomains). The pull hosts do not count: a later smolvm may allow them for the image
        pull only."""
        if self.mode is NetworkMode.OPEN:
            return True
        name = host.lower().rstrip(".")
        return any(
            name == allowed or name.endswith("." + allowed)
            for allowed in (h.lower().rstrip(".") for h in self.allow_hosts)
        )

    def describe(self) -> str:
        """One line for logs and messages."""
        if not self.mode.restricted:
            return f"network {self.mode}"
        parts = [*self.allow_hosts, *self.allow_cidrs]
        text = f"network {self.mode}: only {', '.join(parts)}"
        if self.pull_hosts:
            text += f" (and, for the image pull, {', '.join(self.pull_hosts)})"
        return text


def plan(
    network: NetworkMode | str | bool | None,
    *,
    image: str | None,
    registry: bool,
    provider_name: str = "",
    provider_hosts: Sequence[str] = (),
    allow_hosts: Sequence[str] = (),
    allow_cidrs: Sequence[str] = (),
    smolvm_version: tuple[int, int, int] = (0, 0, 0),
) -> NetworkPolicy:
    """Decide the machine's network.

    `network=None` is `open` for a registry image (the pull needs it) and `off` otherwise.
    `off` with a registry image is refused, saying how to supply the image locally. With an
    allow-list and a registry image, the pull hosts are added on the command line where
    smolvm would not let the first boot reach them itself: smolvm older than 1.3.5, or a
    registry with a port (smolvm's fold keeps the port and never matches). An allow-list of
    CIDRs only (no hosts) with a registry image is refused: smolvm folds the registry into
    the DNS allow-list only when there is one, so the pull could never reach the registry.

    Raises:
        InvalidInputError: a bad name, CIDR or combination; before any smolvm call.
    """
    hosts = check_hosts(allow_hosts)
    cidrs = check_cidrs(allow_cidrs)
    if network is None:
        if hosts or cidrs:
            raise InvalidInputError(
                Message(
                    "allowed hosts and CIDRs need {agent} (the agent provider's hosts plus "
                    "these) or {allow} (these only)",
                    agent=Param("network", "agent"),
                    allow=Param("network", "allow"),
                )
            )
        mode = NetworkMode.OPEN if registry else NetworkMode.OFF
    else:
        mode = NetworkMode.parse(network)
    if mode is NetworkMode.OFF and registry:
        raise InvalidInputError(
            Message(
                "image {image!r} is pulled from a registry, which needs the machine's network, "
                "and networking is off. Turn it on ({open}, or {agent} for the agent's hosts "
                "only), or supply the image locally: save it to an archive (`docker save "
                "{image} -o image.tar`) and launch with {local}",
                image=image,
                open=Param("network", "open"),
                agent=Param("network", "agent"),
                local=Param("image", "./image.tar"),
            )
        )
    if not mode.restricted:
        if hosts or cidrs:
            raise InvalidInputError(
                Message(
                    "allowed hosts and CIDRs only apply to {agent} or {allow}, not {mode}",
                    agent=Param("network", "agent"),
                    allow=Param("network", "allow"),
                    mode=Param("network", mode.value),
                )
            )
        return NetworkPolicy(mode)
    if mode is NetworkMode.AGENT:
        wanted = check_hosts(provider_hosts, f"agent provider {provider_name!r}'s hosts")
        hosts = _unique([*wanted, *hosts])
        if not hosts and not cidrs:
            raise InvalidInputError(
                Message(
                    "agent provider {provider!r} names no hosts, so {agent} would allow "
                    "nothing: give {hosts} / {cidrs}, or {off}",
                    provider=provider_name,
                    agent=Param("network", "agent"),
                    hosts=Param("allow_hosts"),
                    cidrs=Param("allow_cidrs"),
                    off=Param("network", "off"),
                )
            )
    elif not hosts and not cidrs:
        raise InvalidInputError(
            Message(
                "{allow} needs allowed hosts or CIDRs ({hosts}, {cidrs}); for no network at "
                "all use {off}",
                allow=Param("network", "allow"),
                hosts=Param("allow_hosts"),
                cidrs=Param("allow_cidrs"),
                off=Param("network", "off"),
            )
        )
    folded: tuple[str, ...] = ()
    if registry and image is not None:
        needed = registry_pull_hosts(image)
        if not hosts:
            raise InvalidInputError(
                Message(
                    "image {image!r} is pulled from a registry inside the machine, and an "
                    "allow-list of CIDRs only lets it reach no registry (smolvm allows the "
                    "registry's hosts only alongside allowed hosts). Add the registry's hosts "
                    "({hosts}), use {open}, or supply the image locally (`docker save {image} "
                    "-o image.tar`, then {local})",
                    image=image,
                    hosts=Param("allow_hosts", list(needed)),
                    open=Param("network", "open"),
                    local=Param("image", "./image.tar"),
                )
            )
        smolvm_folds = smolvm_version >= PULL_FOLD_SINCE and ":" not in registry_host(image)
        missing = [h for h in needed if h.lower() not in {x.lower() for x in hosts}]
        if smolvm_folds:
            folded = tuple(missing)
        else:
            hosts = _unique([*hosts, *missing])
    return NetworkPolicy(mode, hosts, cidrs, folded)
