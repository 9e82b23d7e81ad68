"""`bottle completion bash|zsh|fish`: a shell's completion script, made from the command table
and each command's own parser, so that a new command or option completes with no edit here.

What completes: the commands; each command's options (the global ones too); the values of an
option with choices; machine names (asked of `bottle ls --names` when completing) for `-n`/
`--name` and for positional arguments named NAME; files for options and arguments that name a
host file. `relay` and `bench`, programs of their own, complete by name only. zsh runs the bash
script through its `bashcompinit`.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bottle import __version__
from bottle.cli._command import Command, Entry, Parser
from bottle.cli._errors import PROG

SHELLS = ("bash", "zsh", "fish")
MACHINE, FILE, ENV, CHOICE, NONE = "machine", "file", "env", "choice", "none"


@dataclass
class Option:
    names: list[str]
    kind: str  # MACHINE, FILE, ENV, CHOICE or NONE for one that takes a value; "" for a flag
    choices: list[str] = field(default_factory=list)
    help: str = ""


@dataclass
class Spec:
    """What completes after one command."""

    name: str
    summary: str
    options: list[Option] = field(default_factory=list)
    positionals: list[Option] = field(default_factory=list)  # nameless: their kind and choices
    repeats: bool = False  # the last positional takes any number of words


def _value_kind(action: argparse.Action) -> str:
    if action.choices is not None:
        return CHOICE
    metavar = str(action.metavar or "")
    if action.dest in ("name", "names") or (not action.option_strings and metavar == "NAME"):
        return MACHINE
    if action.dest == "secret_env":
        return ENV
    if "file" in f"{action.dest} {metavar}".lower():
        return FILE
    return NONE


def spec_of(name: str, entry: Entry) -> Spec:
    """The completion spec of one command, read from its parser."""
    spec = Spec(name, entry.summary)
    if entry.command is None:
        return spec
    command = getattr(importlib.import_module(entry.module), entry.command)()
    assert isinstance(command, Command)
    parser = command.parser(name)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        choices = [str(c) for c in action.choices or ()]
        if action.option_strings:
            kind = "" if action.nargs == 0 else _value_kind(action)
            spec.options.append(Option(list(action.option_strings), kind, choices, _help(action)))
        else:
            kind = _value_kind(action)
            spec.positionals.append(Option([], FILE if kind == NONE else kind, choices))
            spec.repeats = action.nargs in ("+", "*", argparse.REMAINDER)
    return spec


def _help(action: argparse.Action) -> str:
    text = " ".join((action.help or "").split())
    text = text.split(" (")[0].split("; ")[0]
    return text.replace("%(default)s", str(action.default))


def specs(commands: Mapping[str, Entry]) -> list[Spec]:
    return [spec_of(name, entry) for name, entry in commands.items()]


GLOBAL = [
    Option(["-h", "--help"], "", help="show help"),
    Option(["--version"], "", help="show versions"),
    Option(["-v", "--verbose"], "", help="log each smolvm call"),
    Option(["-q", "--quiet"], "", help="no progress display"),
]


# --- bash (and zsh) --------------------------------------------------------------------------


def _words(items: Iterable[str]) -> str:
    return shlex.quote(" ".join(items))


def _bash_values(kind: str, choices: list[str]) -> str:
    if kind == MACHINE:
        return "_bottle_machines"
    if kind == FILE:
        return 'COMPREPLY=($(compgen -f -- "$cur"))'
    if kind == ENV:
        return 'COMPREPLY=($(compgen -e -- "$cur"))'
    if kind == CHOICE:
        return f'COMPREPLY=($(compgen -W {_words(choices)} -- "$cur"))'
    return "COMPREPLY=()"


def _bash_command(spec: Spec) -> str:
    valued = [o for o in spec.options if o.kind]
    lines = [f"    {shlex.quote(spec.name)})"]
    if valued:
        lines.append("        case $prev in")
        for option in valued:
            if option.kind != NONE:
                lines.append(
                    f"            {'|'.join(option.names)}) "
                    f"{_bash_values(option.kind, option.choices)}; return;;"
                )
        plain = [n for o in valued if o.kind == NONE for n in o.names]
        if plain:  # a value nothing can guess
            lines.append(f"            {'|'.join(plain)}) return;;")
        lines.append("        esac")
    names = [n for o in spec.options for n in o.names]
    lines.append(
        f'        if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W {_words(names)} -- "$cur")); '
        "return; fi"
    )
    if spec.positionals:
        takes = " ".join(n for o in valued for n in o.names)
        lines.append(f'        _bottle_position {shlex.quote(" " + takes + " ")} "$first"')
        lines.append("        case $position in")
        for i, arg in enumerate(spec.positionals):
            last = spec.repeats and i == len(spec.positionals) - 1
            pattern = "*" if last else str(i)  # the last one takes every word after it
            lines.append(f"            {pattern}) {_bash_values(arg.kind, arg.choices)};;")
        lines.append("        esac")
    lines.append("        ;;")
    return "\n".join(lines)


def bash(all_specs: list[Spec]) -> str:
    return f"""\
# bash completion for {PROG} {__version__}, made by `{PROG} completion bash`:
#   source <({PROG} completion bash)
# (or save it as ~/.local/share/bash-completion/completions/{PROG})

{_bash_functions(all_specs)}"""


def _bash_functions(all_specs: list[Spec]) -> str:
    commands = [s.name for s in all_specs]
    global_names = [n for o in GLOBAL for n in o.names]
    cases = "\n".join(_bash_command(s) for s in all_specs if s.options or s.positionals)
    return f"""\
_bottle_machines() {{
    # Machine names, from the {PROG} being completed.
    COMPREPLY=($(compgen -W "$("${{COMP_WORDS[0]}}" ls --names 2>/dev/null)" -- "$cur"))
}}

_bottle_position() {{
    # How many positional words come before the one being completed: words from $2 on that
    # are not options, nor the value of an option in $1 (" -n --name ... ").
    local j word
    position=0
    for ((j = $2; j < COMP_CWORD; j++)); do
        word=${{COMP_WORDS[j]}}
        if [[ $word == -* ]]; then
            [[ $word != *=* && $1 == *" $word "* ]] && ((j++))
        else
            ((position++))
        fi
    done
}}

_bottle() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local i cmd="" first position
    # --opt=value: bash splits it at "=".
    if [[ $cur == = ]]; then cur=""; fi
    if [[ $prev == = ]]; then prev=${{COMP_WORDS[COMP_CWORD-2]}}; fi
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            --) return;;
            -*) ;;
            *) cmd=${{COMP_WORDS[i]}}; break;;
        esac
    done
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W {_words(global_names)} -- "$cur"))
        else
            COMPREPLY=($(compgen -W {_words(commands)} -- "$cur"))
        fi
        return
    fi
    first=$((i + 1))
    for ((i = first; i < COMP_CWORD; i++)); do
        [[ ${{COMP_WORDS[i]}} == -- ]] && return  # the rest is the agent's or the command's
    done
    case $cmd in
{cases}
    esac
}}

complete -F _bottle {PROG}
"""


def zsh(all_specs: list[Spec]) -> str:
    return f"""\
# zsh completion for {PROG} {__version__}, made by `{PROG} completion zsh`:
#   source <({PROG} completion zsh)      (in ~/.zshrc, after compinit)
autoload -U +X bashcompinit && bashcompinit

{_bash_functions(all_specs)}"""


# --- fish ------------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(condition: str, option: Option) -> str:
    parts = ["complete -c", PROG, "-n", _fish_quote(condition)]
    for name in option.names:
        if name.startswith("--"):
            parts += ["-l", name[2:]]
        else:
            parts += ["-s", name[1:]]
    if option.kind == MACHINE:
        parts += ["-x", "-a", _fish_quote("(__bottle_machines)")]
    elif option.kind == FILE:
        parts += ["-r", "-F"]
    elif option.kind == ENV:
        parts += ["-x", "-a", _fish_quote("(set -nx)")]
    elif option.kind == CHOICE:
        parts += ["-x", "-a", _fish_quote(" ".join(option.choices))]
    elif option.kind == NONE:
        parts.append("-x")
    if option.help:
        parts += ["-d", _fish_quote(option.help)]
    return " ".join(parts)


def fish(all_specs: list[Spec]) -> str:
    lines = [
        f"# fish completion for {PROG} {__version__}, made by `{PROG} completion fish`:",
        f"#   {PROG} completion fish | source      "
        f"(or save it as ~/.config/fish/completions/{PROG}.fish)",
        "",
        "function __bottle_command",
        "    # The command word: the first one after bottle that is not an option.",
        "    set -l words (commandline -opc)",
        "    for word in $words[2..-1]",
        "        switch $word",
        "            case '--'",
        "                return 1",
        "            case '-*'",
        "                continue",
        "            case '*'",
        "                echo $word",
        "                return 0",
        "        end",
        "    end",
        "    return 1",
        "end",
        "",
        "function __bottle_after",
        "    # True while completing the arguments of command $argv[1] (before any `--`).",
        "    set -l words (commandline -opc)",
        "    contains -- -- $words[3..-1]; and return 1",
        "    set -l command (__bottle_command); or return 1",
        '    test "$command" = "$argv[1]"',
        "end",
        "",
        "function __bottle_machines",
        "    set -l words (commandline -opc)",
        "    $words[1] ls --names 2>/dev/null",
        "end",
        "",
        f"complete -c {PROG} -f",
    ]
    for spec in all_specs:
        lines.append(
            f"complete -c {PROG} -n 'not __bottle_command' -a {_fish_quote(spec.name)} "
            f"-d {_fish_quote(spec.summary)}"
        )
    lines += [_fish_option("not __bottle_command", option) for option in GLOBAL]
    for spec in all_specs:
        condition = f"__bottle_after {spec.name}"
        lines += [_fish_option(condition, option) for option in spec.options]
        for arg in spec.positionals:
            values = {MACHINE: "-a '(__bottle_machines)'", FILE: "-F"}.get(arg.kind, "")
            if arg.kind == CHOICE:
                values = f"-a {_fish_quote(' '.join(arg.choices))}"
            lines.append(f"complete -c {PROG} -n {_fish_quote(condition)} {values}")
    return "\n".join(lines) + "\n"


class Completion(Command):
    description = (
        "Print the completion script of a shell for bottle. bash: `source <(bottle completion "
        "bash)`; zsh: the same in ~/.zshrc after compinit; fish: `bottle completion fish | "
        "source`."
    )

    def configure(self, parser: Parser) -> None:
        parser.add_argument("shell", choices=SHELLS, help="the shell")

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        made = {"bash": bash, "zsh": zsh, "fish": fish}[ns.shell](specs(self.commands))
        sys.stdout.write(made)
        return 0
