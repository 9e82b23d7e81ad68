"""The package's import graph: layers that import downward only, and no cycle.

Every `import` in src/bottle counts, wherever it stands: at the top, inside a function, or under
`if TYPE_CHECKING` (a type-only import still ties the two modules together for a reader and for
mypy). A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: list[tuple[str, ...]] = [
    # Exceptions, the package itself (a version string and a platform check), and the
    # loggers that load `logging` only when needed (the standard library only).
    # The take-over of Ctrl-C that the entry modules import first (the standard library only).
    ("bottle", "bottle.errors", "bottle._log", "bottle._sigint"),
    # Input checks and the small result types, built on the exceptions only; the network
    # policy (checks of allowed hosts and CIDRs) is one of them; the cache of what bottle
    # learnt of smolvm and its machines (the standard library only).
    # The session protocol's numbers and frames too.
    (
        "bottle._validate",
        "bottle.results",
        "bottle.network",
        "bottle._cache",
        "bottle._sessionwire",
        # A streamed exec's pieces, and the plain warm `bottle exec` made of them alone.
        "bottle._execwire",
        "bottle._quickexec",
    ),
    # The tools the backend uses: the relay (both copy loops and the front), the recording that
    # the relay's and the holder's loops share, detached sessions (their holder's and their
    # attach client's loops, both twins; the holder; the client), the smolvm CLI wrapper, and
    # the agent provider table.
    (
        "bottle._ptyrelay",
        "bottle._ptyrelay_py",
        "bottle._recorder_py",
        "bottle._hub_py",
        "bottle._attach_py",
        "bottle.sessions",
        "bottle.sessions._client",
        "bottle.sessions._dirs",
        "bottle.sessions._holder",
        "bottle.relay",
        "bottle.relay._impl",
        "bottle.relay._children",
        "bottle.relay._tty",
        "bottle.relay._session",
        "bottle.relay._recording",
        "bottle.smolvm",
        "bottle.agent_provider",
    ),
    # The backend contract and terminal decoration.
    ("bottle.backend", "bottle.backend.terminal"),
    # The smolmachines backend.
    ("bottle.backend.smolmachines",),
    # Programs: the relay's and the benchmark's; the command line's shared pieces (errors in
    # its terms, parsing, option groups, progress, secrets, the agent session).
    ("bottle.relay.__main__", "bottle.bench*", "bottle.cli._*"),
    # The command line's commands, one module per family, each over the API and the pieces.
    ("bottle.cli.*",),
    # Its entry: the console script's first module, `python -m bottle`, the command table.
    ("bottle._console", "bottle.__main__", "bottle.cli", "bottle.cli._main"),
]


def layer_of(module: str) -> int:
    # A name given exactly wins over a pattern (`bottle.cli._main` over `bottle.cli._*`).
    for rank, names in enumerate(LAYERS):
        if module in names:
            return rank
    for rank, names in enumerate(LAYERS):
        for name in names:
            if name.endswith("*") and module.startswith(name[:-1]):
                return rank
    raise AssertionError(f"{module} has no layer in LAYERS: give it one")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "bottle").rglob("*.py"))}


def imports(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The bottle modules that `module` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                # `from bottle.backend import terminal` imports the submodule.
                yield sub if sub in known else source


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found) | {"bottle._ptyrelay"}
    return {
        name: {m for m in imports(name, path, known) if m == "bottle" or m.startswith("bottle.")}
        - {name}
        for name, path in found.items()
    }


def test_every_module_has_a_layer() -> None:
    for name in graph():
        layer_of(name)


def test_imports_point_downward_only() -> None:
    upward = [
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in sorted(graph().items())
        for dst in sorted(targets)
        if layer_of(dst) > layer_of(src)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_native_relay_imports_nothing_of_bottle() -> None:
    # The extension sits in the tools' layer; Cython source is not Python, so read it plainly.
    text = (SRC / "_ptyrelay.pyx").read_text()
    assert "import bottle" not in text and "from bottle" not in text


def test_the_graph_sees_what_it_checks() -> None:
    """The checks above only mean something if the graph finds real edges of every kind."""
    edges = graph()
    # A top-level import, a `from package import submodule`, and an import inside a function.
    assert "bottle.errors" in edges["bottle._validate"]
    assert "bottle.backend.terminal" in edges["bottle.backend.smolmachines"]
    assert "bottle.relay" in edges["bottle.backend.smolmachines"]  # imported in exec_agent
    # An upward edge is caught: the CLI as seen from the errors module.
    assert layer_of("bottle.cli") > layer_of("bottle.errors")
    # The command line's layers: shared pieces, then commands, then the table that finds them.
    assert layer_of("bottle.cli._errors") < layer_of("bottle.cli.launch")
    assert layer_of("bottle.cli.launch") < layer_of("bottle.cli._main")
    assert "bottle.cli._agent" in edges["bottle.cli.launch"]


def test_the_builtin_backend_is_loaded_by_the_reference_pyproject_declares() -> None:
    # The contract (layer 3) reaches the smolmachines backend (layer 4) only by this reference.
    from bottle import backend

    pyproject = (SRC.parent / "pyproject.toml").read_text()
    declared = f'{backend.BUILTIN_BACKEND} = "{backend._BUILTIN_TARGET}"'
    assert declared in pyproject
    assert type(backend.get_backend(backend.BUILTIN_BACKEND)).__name__ == (
        "SmolmachinesBottleBackend"
    )
