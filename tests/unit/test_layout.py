"""The code keeps the shape DESIGN.md and the README's Layout section describe: imports only point down
the layers, no source file over 500 lines, no function over 60."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "softprompt"
LAYERS = [
    ("defaults", "files", "outdir", "report", "config", "command_args", "arguments", "checkpoint", "kv"),  # bottom: no imports of softprompt above them
    ("data", "model"),
    ("methods",),
    ("engine",),
    ("prompts", "multitask", "inference"),  # the engine with tasks and adapters: what the jobs answer with
    ("train", "evaluate", "serve", "export", "launch"),  # the jobs
    ("compare", "sweep"),  # jobs made of jobs
    ("cli", "webui", "__main__", "__init__"),  # the commands and the web page over them
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}
MODULES = sorted(PACKAGE.rglob("*.py"))


def _top(module: str) -> str:
    """The first part under softprompt of a dotted module name (``softprompt.train.loop`` -> ``train``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    here = ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = here.rsplit(".", 1)[0] if path.name != "__init__.py" else here.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found |= {f"{module}.{a.name}" if module == "softprompt" else module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("softprompt.")}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    mine = _top(".".join(path.relative_to(SRC).with_suffix("").parts))
    assert mine in LEVEL, f"{path}: place it in a layer of LAYERS (and in the README's Layout)"
    upward = [m for m in _imports(path) if LEVEL[_top(m)] > LEVEL[mine]]
    assert not upward, f"{path} imports {upward} from a layer above its own"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 500, f"{path} has {len(text.splitlines())} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, f"{path}: functions over 60 lines: {long}"
