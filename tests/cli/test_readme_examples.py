"""Every command-line example in README.md runs, and prints what the README says it prints.

An example is a fenced block opened with ```` ```sh example ````. The examples run in the order
the README gives them, as one user's session at a shell: one fake smolvm (tests/fake_smolvm/,
at 1.9.3), one working directory, one session directory, `bottle` on PATH, each block under
`bash -euo pipefail` with no terminal (stdin is /dev/null). A ```` ```text ```` block right
after an example is its output, stdout and stderr together (a pty's CRLF read as LF; `…`
stands for any text within a line, such as a time); without one, the block only has to
succeed. To show a failure, end the line with `|| echo "status $?"`.

A ```` ```sh ```` block with a line starting `bottle ` that is not marked is refused, so that no
example of the command line goes untested.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

from harness.backend import npm_image_env
from harness.sessions import runtime_dir

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*\n", re.M | re.S)

# What the examples may refer to, set up as a user's machine would have it: `node:22` like
# docker's (no USER, so commands run as root; a `node` user inside; npm on its PATH, here the
# tests' fake one, and no agent CLI), and the names an allow-list example resolves
# (documentation addresses, RFC 5737: nothing is contacted).
IMAGES: dict[str, dict[str, Any]] = {"node:22": {"npm": True}}
HOSTS = {
    "github.com": "192.0.2.10",
    "api.anthropic.com": "192.0.2.20",
    "platform.claude.com": "192.0.2.21",
}


class Example(NamedTuple):
    line: int
    script: str
    output: str | None


def examples(text: str) -> list[Example]:
    """The marked examples, each with the output block that follows it, if any."""
    found: list[Example] = []
    blocks = list(FENCE.finditer(text))
    for i, block in enumerate(blocks):
        info = block.group(1).split()
        if info[:2] != ["sh", "example"]:
            continue
        output = None
        after = blocks[i + 1] if i + 1 < len(blocks) else None
        if (
            after is not None
            and after.group(1).strip() == "text"
            and text[block.end() : after.start()].strip() == ""
        ):
            output = after.group(2)
        found.append(Example(text.count("\n", 0, block.start()) + 1, block.group(2), output))
    return found


def matches(expected: str, output: str) -> bool:
    """Whether `output` is `expected`, each `…` in it standing for any text within a line."""
    pattern = ".*?".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, output) is not None


def test_every_command_line_example_is_marked() -> None:
    text = README.read_text()
    unmarked = []
    for block in FENCE.finditer(text):
        info = block.group(1).split()
        marked = info[:2] == ["sh", "example"]
        if info[:1] == ["sh"] and not marked and re.search(r"^bottle\s", block.group(2), re.M):
            unmarked.append(text.count("\n", 0, block.start()) + 1)
    assert unmarked == [], f"README.md blocks at lines {unmarked}: mark them ```sh example"
    assert len(examples(text)) >= 2  # the parser finds them


def test_the_parser_pairs_an_example_with_its_output() -> None:
    text = "```sh example\necho a\n```\n\n```text\na\n```\n```sh example\ntrue\n```\n```text\n"
    text += "x\n```\n"
    assert examples("para\n" + text) == [Example(2, "echo a\n", "a\n"), Example(9, "true\n", "x\n")]
    # Prose between them: the text block is not this example's output.
    assert examples("```sh example\ntrue\n```\nsee:\n```text\nx\n```\n")[0].output is None
    assert matches('{"t": …, "x": 1}\n', '{"t": 17.5, "x": 1}\n')
    assert not matches("a …\nb\n", "a 1\nc\nb\n")  # within a line only
    assert not matches("a\n", "a\nmore\n")


def test_readme_examples_run(fake_smolvm: Any, shared_dir: Path, tmp_path: Path) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # exact output: no warning of an older release
    for ref, config in IMAGES.items():
        npm = config.get("npm", False)
        config = {k: v for k, v in config.items() if k != "npm"}
        if npm:  # the image's npm installs into a prefix of this test's
            config["env"] = npm_image_env(shared_dir / "npm-global")
        fake_smolvm.add_image(ref, **config)
    for name, address in HOSTS.items():
        fake_smolvm.add_host(name, address)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # A user's login sets these, and a recording's header names them; CI runs with neither
    # guaranteed (no SHELL there), so the session gets the ones a login at bash would give.
    env.setdefault("SHELL", "/bin/bash")
    env.setdefault("TERM", "xterm")
    work = tmp_path / "work"
    work.mkdir()
    with runtime_dir() as runtime:  # the user's own session directory (detached sessions)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        run_examples(env, work)


def run_examples(env: dict[str, str], work: Path) -> None:
    for example in examples(README.read_text()):
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", example.script], cwd=work, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=120, check=False,
        )  # fmt: skip
        where = f"README.md line {example.line}"
        assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{proc.stdout}"
        output = proc.stdout.replace("\r\n", "\n")
        if example.output is not None:
            assert matches(example.output, output), f"{where}: printed\n{output}"

