"""The package layout's rules, checked over the real import graph (every import statement, module level or not).

- the core (``hecktor.core``) imports nothing else of the package;
- the stages (``io``, ``preprocess``, ``segment``, ``restore``, ``measure``, ``outcome``) import neither the
  pipeline nor a face (``hecktor.apps``); the pipeline imports no face;
- no product module imports ``training`` or ``bench``;
- ``torch`` (and what needs it: safetensors' torch API, monai) is imported only inside a ``torch_backend``
  package, and no module outside one imports a ``torch_backend`` module at module level, so importing any other
  module needs no torch (checked for real in a subprocess where ``import torch`` fails).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hecktor"
STAGES = ("hecktor.io", "hecktor.preprocess", "hecktor.segment", "hecktor.restore", "hecktor.measure",
          "hecktor.outcome")
TORCH_LIBRARIES = ("torch", "safetensors.torch", "monai")


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    module_level: bool
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = importer.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # "from hecktor.core import metrics" imports the module hecktor.core.metrics
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def imports_of(path: Path) -> list[Import]:
    importer = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    module_level = {id(node) for node in tree.body}
    # Imports under "if TYPE_CHECKING:" at module level never run.
    type_only = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(importer, path.name == "__init__.py", node)
        else:
            continue
        found += [Import(importer, name, id(node) in module_level, node.lineno) for name in names]
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def _violations(graph: list[Import], importer_in, imported_in, module_level_only: bool = False) -> list[str]:
    return sorted(f"{i.importer}:{i.line} imports {i.imported}" for i in graph
                  if importer_in(i.importer) and imported_in(i.imported) and (i.module_level or not module_level_only))


def test_the_graph_is_read(graph):
    # A parser that found nothing would pass every rule below.
    assert any(i.importer == "hecktor.pipeline" and i.imported.startswith("hecktor.segment") for i in graph)
    assert any(i.importer == "hecktor.segment.torch_backend.runner" and i.imported == "torch" for i in graph)
    assert len({i.importer for i in graph}) > 40


def test_the_core_imports_no_other_part_of_the_package(graph):
    assert _violations(graph, lambda m: within(m, "hecktor.core"),
                       lambda n: within(n, "hecktor") and not within(n, "hecktor.core") and n != "hecktor") == []


def test_stages_import_neither_the_pipeline_nor_a_face(graph):
    def is_stage(m):
        return any(within(m, s) for s in STAGES)

    assert _violations(graph, is_stage, lambda n: within(n, "hecktor.apps") or within(n, "hecktor.pipeline")) == []
    assert _violations(graph, lambda m: m == "hecktor.pipeline", lambda n: within(n, "hecktor.apps")) == []


def test_no_product_module_imports_training_or_benchmarks(graph):
    assert _violations(graph, lambda m: True, lambda n: within(n, "training") or within(n, "bench")) == []


def _in_torch_backend(module: str) -> bool:
    return ".torch_backend" in module


def test_torch_only_in_a_torch_backend(graph):
    assert _violations(graph, lambda m: not _in_torch_backend(m),
                       lambda n: any(within(n, lib) for lib in TORCH_LIBRARIES)) == []
    assert _violations(graph, lambda m: not _in_torch_backend(m), _in_torch_backend, module_level_only=True) == []


def test_every_module_outside_the_torch_backends_imports_without_torch():
    modules = sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                     if not _in_torch_backend(module_name(p)) and p.name != "__main__.py")
    code = ("import sys, importlib\nsys.modules['torch'] = None\nsys.modules['monai'] = None\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "assert sys.modules['torch'] is None\nprint(len(" + repr(modules) + "))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(modules) > 40
