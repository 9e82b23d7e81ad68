"""Agent providers as data: how each agent CLI is told about its system-prompt file."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from bottle.errors import InvalidInputError, UnknownProviderError

__all__ = [
    "NPM_REGISTRY",
    "PROVIDERS",
    "AgentProvider",
    "PromptMode",
    "agent_args",
    "get_provider",
    "prompt_args",
]


class PromptMode(str, enum.Enum):
    """How the prompt file reaches the agent. Each mode is also its plain string."""

    #: `<flag> <path>` placed before the user's arguments.
    APPEND_FILE = "append_file"
    #: The user's arguments first, then an argument asking the agent to read the file.
    READ_PROMPT_FILE = "read_prompt_file"
    #: No prompt arguments at all.
    NONE = "none"

    def __str__(self) -> str:
        # Callers of the replaced class hold plain strings and format them into messages.
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def parse(cls, value: PromptMode | str) -> PromptMode:
        """Turn a mode name into a `PromptMode`; unknown names list the valid ones."""
        if isinstance(value, PromptMode):
            return value
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise InvalidInputError(
                f"unknown prompt mode {value!r}; valid modes: {valid}"
            ) from None


@dataclass(frozen=True)
class AgentProvider:
    """What bottle knows about one agent CLI."""

    name: str
    #: The program to run in the guest.
    command: str
    #: The mode used unless the caller picks another.
    prompt_mode: PromptMode
    #: Flag taking the prompt file's path, for `append_file`; None if the CLI has none.
    append_flag: str | None = None
    #: Argument(s) for `read_prompt_file`; `{path}` is replaced by the prompt file's path.
    read_prompt: tuple[str, ...] = (
        "Before anything else, read the instructions in the file {path} and follow them.",
    )
    #: The hosts the agent needs to work: what `network="agent"` allows (a host also allows
    #: its subdomains). Telemetry, error reporting and update checks are left out.
    egress_hosts: tuple[str, ...] = ()
    #: The command that installs the CLI system-wide in a guest (run as root; its first word
    #: must be on the guest's PATH); empty: bottle cannot install this agent.
    install_command: tuple[str, ...] = ()
    #: The hosts that command fetches from: a machine with an allow-list must reach them.
    install_hosts: tuple[str, ...] = ()


# The npm registry that `npm install` fetches a package from (npm's default registry).
NPM_REGISTRY = "registry.npmjs.org"


def _npm_install(package: str) -> tuple[str, ...]:
    # Global, so that the binary lands in npm's prefix (/usr/local/bin in the node images), on
    # every user's PATH; no audit (another request) and no funding notice (lines nobody asked
    # for). Install scripts and optional dependencies stay on: the agent CLIs ship their
    # native binaries as optional per-platform packages.
    return ("npm", "install", "--global", "--no-fund", "--no-audit", package)


PROVIDERS: Mapping[str, AgentProvider] = MappingProxyType(
    {
        "claude": AgentProvider(
            name="claude",
            command="claude",
            prompt_mode=PromptMode.APPEND_FILE,
            append_flag="--append-system-prompt-file",
            # The Messages API (also the OAuth profile and API-key calls of a claude.ai or
            # Console login), and the OAuth token endpoint a login and its refresh use. The
            # authorize page opens in the user's browser, on the host.
            egress_hosts=("api.anthropic.com", "platform.claude.com"),
            install_command=_npm_install("@anthropic-ai/claude-code"),
            install_hosts=(NPM_REGISTRY,),
        ),
        # codex takes an initial prompt as its positional argument and has no flag that
        # appends a file to the system prompt, so it is asked to read the file.
        "codex": AgentProvider(
            name="codex",
            command="codex",
            prompt_mode=PromptMode.READ_PROMPT_FILE,
            # The API (an API key), the OAuth issuer that signs in and refreshes a ChatGPT
            # login, and the ChatGPT backend a ChatGPT-plan session talks to.
            egress_hosts=("api.openai.com", "auth.openai.com", "chatgpt.com"),
            install_command=_npm_install("@openai/codex"),
            install_hosts=(NPM_REGISTRY,),
        ),
    }
)


def get_provider(name: str | AgentProvider) -> AgentProvider:
    """Look a provider up by name."""
    if isinstance(name, AgentProvider):
        return name
    try:
        return PROVIDERS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(PROVIDERS))
        raise UnknownProviderError(
            f"unknown agent provider {name!r}; known providers: {known}"
        ) from None


def prompt_args(
    mode: PromptMode | str,
    prompt_path: str | None,
    argv: Sequence[str] = (),
    *,
    provider: str | AgentProvider = "claude",
) -> list[str]:
    """The prompt arguments alone; the caller places the user's `argv` around them.

    `append_file` gives the provider's flag and the path, which go *before* `argv`;
    `read_prompt_file` gives the provider's read-the-file argument(s), which go *after* it;
    `none`, or no `prompt_path`, gives nothing. `argv` (the replaced function's parameter) is
    checked but does not change the result. `agent_args` does the placing.
    """
    mode = PromptMode.parse(mode)
    spec = get_provider(provider)
    if isinstance(argv, str):
        raise InvalidInputError("argv must be a sequence of strings, not a string")
    if mode is PromptMode.NONE or not prompt_path:
        return []
    if mode is PromptMode.APPEND_FILE:
        if spec.append_flag is None:
            raise InvalidInputError(
                f"agent provider {spec.name!r} has no flag for prompt mode "
                f"{PromptMode.APPEND_FILE.value!r}; use {PromptMode.READ_PROMPT_FILE.value!r}"
            )
        return [spec.append_flag, prompt_path]
    return [arg.replace("{path}", prompt_path) for arg in spec.read_prompt]


def agent_args(
    mode: PromptMode | str,
    prompt_path: str | None,
    argv: Sequence[str],
    *,
    provider: str | AgentProvider = "claude",
) -> list[str]:
    """The agent's arguments: the user's `argv` with the prompt arguments placed per `mode`."""
    extra = prompt_args(mode, prompt_path, argv, provider=provider)
    if PromptMode.parse(mode) is PromptMode.APPEND_FILE:
        return [*extra, *argv]
    return [*argv, *extra]
