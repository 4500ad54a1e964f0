"""The package's layers: every import points down or sideways, and no two packages import
each other.

    .venv/bin/python -m pytest tests/test_layers.py -q

Every `import` and `from ... import` statement of src/speechswarm is read with `ast`,
including those inside functions (a lazy import is still a dependency) and under
`TYPE_CHECKING`. The layers, lowest first (docs/design.md, "Layers"):

    0  bottom     errors, checkpoint, frames, native_output, host, atomic: anything may
                  import them
    1  config     the typed config sections and their loader
    2  model      data, features, augment, model, fused_gru, decode, metrics, report
    3  assembly   build (config -> objects), inference, streaming, transcribe, evaluate,
                  export, onnx_runtime
    4  train      the loop and its seam (Synchronizer, DDP glue, SyncBatchNorm)
    5  drivers    distributed, p2p, demo, benchmark: what runs the loop in other ways;
                  serve (the HTTP server)
    6  cli        every module named cli.py, and __main__.py, wherever it lives

A module imports only from its own layer or below. Within the whole graph, the units (the
entries of LAYERS below, one per package or top-level module; each CLI module on its own)
must not form a cycle. A new module must be placed in LAYERS explicitly.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "speechswarm"
NAMES = ("bottom", "config", "model", "assembly", "train", "drivers", "cli")
CLI = 6

# Module (or package) -> layer; the longest matching prefix decides.
LAYERS = {
    "speechswarm.errors": 0,
    "speechswarm.atomic": 0,
    "speechswarm.checkpoint": 0,
    "speechswarm.frames": 0,
    "speechswarm.native_output": 0,
    "speechswarm.host": 0,
    "speechswarm.config": 1,
    "speechswarm.data": 2,
    "speechswarm.features": 2,
    "speechswarm.augment": 2,
    "speechswarm.model": 2,
    "speechswarm.fused_gru": 2,
    "speechswarm.decode": 2,
    "speechswarm.metrics": 2,
    "speechswarm.report": 2,
    "speechswarm.tracking": 2,
    "speechswarm.plots": 2,
    "speechswarm.recurrence": 2,
    "speechswarm.build": 3,
    "speechswarm.inference": 3,
    "speechswarm.transcribe": 3,
    "speechswarm.streaming": 3,
    "speechswarm.evaluate": 3,
    "speechswarm.export": 3,
    "speechswarm.safetensors_export": 3,
    "speechswarm.average": 3,
    "speechswarm.onnx_runtime": 3,
    "speechswarm.train": 4,
    "speechswarm.dashboard": 4,  # reads run folders; `swarm --dashboard` (p2p.net) starts it
    "speechswarm.distributed": 5,
    "speechswarm.p2p": 5,
    "speechswarm.demo": 5,
    "speechswarm.chaos": 5,
    "speechswarm.benchmark": 5,
    "speechswarm.serve": 5,
}

# Known upward imports in code still being moved, as (importing file relative to src/,
# imported module). Temporary: each entry is a debt to pay, and the list should be empty.
ALLOWED_UPWARD: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    file: str  # relative to src/
    line: int
    importer: str  # module name
    target: str  # module name (a package's __init__ is the package)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    """Every import of a speechswarm module in `path`, anywhere in the file."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    rel = str(path.relative_to(SRC))
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` depends on the module pkg.mod; `from mod import name` on mod
            targets = [
                f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append(Import(rel, node.lineno, importer, target))
    return found


def all_imports() -> list[Import]:
    return [i for path in sorted((SRC / PACKAGE).rglob("*.py")) for i in imports_of(path)]


def is_cli(module: str) -> bool:
    return module.rpartition(".")[2] in ("cli", "__main__")


def unit(module: str) -> str | None:
    """The LAYERS entry `module` belongs to (a CLI module is its own unit); None if none."""
    if is_cli(module):
        return module
    matches = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return max(matches, key=len) if matches else None


def layer(module: str) -> int:
    return CLI if is_cli(module) else LAYERS[unit(module)]


def describe(module: str) -> str:
    return f"{module} (layer {layer(module)}, {NAMES[layer(module)]})"


def checked(imports: list[Import]) -> list[Import]:
    # The package root holds __version__ and the lazy `speechswarm.load` facade; Python
    # imports it with any submodule, so importing it is no dependency on a layer, and its
    # own lazy import of `inference` is the public entry point, like a command.
    return [i for i in imports if PACKAGE not in (i.importer, i.target)]


def test_every_module_has_a_layer():
    modules = {module_name(p) for p in (SRC / PACKAGE).rglob("*.py")} - {PACKAGE}
    missing = sorted(m for m in modules if unit(m) is None)
    assert not missing, f"place these modules in LAYERS of {__file__}: {missing}"


def upward(imports: list[Import]) -> list[Import]:
    """The imports from a lower layer into a higher one, minus the allow-listed."""
    return [
        i
        for i in imports
        if layer(i.importer) < layer(i.target) and (i.file, i.target) not in ALLOWED_UPWARD
    ]


def test_imports_point_down_or_sideways():
    found = upward(checked(all_imports()))
    assert not found, "upward imports (a layer may import only its own or lower ones):\n" + (
        "\n".join(
            f"  src/{i.file}:{i.line}: {describe(i.importer)} imports {describe(i.target)}"
            for i in found
        )
    )


def test_allow_list_holds_only_live_entries():
    live = {
        (i.file, i.target) for i in checked(all_imports()) if layer(i.importer) < layer(i.target)
    }
    stale = sorted(ALLOWED_UPWARD - live)
    assert not stale, f"these ALLOWED_UPWARD entries no longer occur; remove them: {stale}"


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        a, b = unit(i.importer), unit(i.target)
        if a != b and (i.file, i.target) not in ALLOWED_UPWARD:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_packages():
    imports = checked(all_imports())
    found = cycles(imports)
    lines = []
    for component in found:
        lines.append(f"  cycle: {' <-> '.join(component)}")
        members = set(component)
        for i in imports:
            a, b = unit(i.importer), unit(i.target)
            if a != b and a in members and b in members:
                lines.append(f"    src/{i.file}:{i.line}: {i.importer} imports {i.target}")
    assert not found, "packages that import each other:\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- the checker


def test_imports_are_read_from_functions_and_relative_forms(tmp_path, monkeypatch):
    pkg = tmp_path / PACKAGE
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "audio.py").write_text("")
    (pkg / "model.py").write_text("")
    (pkg / "data" / "prepare.py").write_text(
        "import os\n"
        "from . import audio\n"
        "from ..model import DeepSpeech2\n"
        "def f():\n"
        "    from speechswarm.train.loop import train\n"
    )
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    found = [(i.line, i.target) for i in imports_of(pkg / "data" / "prepare.py")]
    assert found == [
        (2, "speechswarm.data.audio"),
        (3, "speechswarm.model"),
        (5, "speechswarm.train.loop"),
    ]


@pytest.mark.parametrize(
    "module,expected",
    [
        ("speechswarm.data.corpora.librispeech", 2),
        ("speechswarm.config.p2p", 1),
        ("speechswarm.p2p.net.peer", 5),
        ("speechswarm.p2p.net.cli", CLI),
        ("speechswarm.__main__", CLI),
        ("speechswarm.train.cli", CLI),
    ],
)
def test_layer_of_a_module(module, expected):
    assert layer(module) == expected


def imp(a: str, b: str) -> Import:
    return Import("x.py", 1, a, b)


def test_an_upward_import_is_found():
    assert upward([imp("speechswarm.train.loop", "speechswarm.data.audio")]) == []
    assert upward([imp("speechswarm.train.cli", "speechswarm.distributed.launch")]) == []
    up = imp("speechswarm.data.dataset", "speechswarm.train.rng")
    assert upward([up]) == [up]
    assert describe("speechswarm.train.rng") == "speechswarm.train.rng (layer 4, train)"


def test_a_cycle_is_found_and_a_chain_is_not():

    chain = [imp("speechswarm.train.loop", "speechswarm.data.audio")]
    assert cycles(chain) == []
    loop = [*chain, imp("speechswarm.data.dataset", "speechswarm.train.rng")]
    assert cycles(loop) == [["speechswarm.data", "speechswarm.train"]]
