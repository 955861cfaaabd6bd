"""The package's layers: every module imports only from its own layer or below.

The layers, lowest first (docs/architecture.md describes each):

1. vocabulary: the IR, errors, stream layouts, memory-image formats, the
   host-link protocol;
2. ``hw``: Amaranth units with plain parameters;
3. the golden model and the dense reference (the IR's meaning);
4. compiler passes: the ONNX frontend, packing, quantization, drain order,
   folding, the performance model, the lowering to units, test networks;
5. the simulation harness (Verilator, cocotb, Amaranth's simulator);
6. boards: catalog, tops, bitstreams, patching, the host runtime, the
   simulated board;
7. the application: the public API, CLI, demo, bench.

Every module of the package must be placed here, so a new module is placed
on purpose. Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hw": "cosparse.hw", "compiler": "cosparse.compiler", "sim": "cosparse.sim",
            "boards": "cosparse.boards", "examples": "cosparse.examples",
            "train": "cosparse.train"}

#: Module (or package) name -> layer. The longest matching name wins.
LAYERS = {
    "cosparse.compiler.errors": 1,
    "cosparse.compiler.ir": 1,
    "cosparse.compiler.manifest": 1,
    "cosparse.compiler.images": 1,
    "cosparse.hw.streams": 1,
    "cosparse.hw.protocol": 1,
    "cosparse.hw": 2,
    "cosparse.sim.golden": 3,
    "cosparse.sim.reference": 3,
    "cosparse.compiler.frontend": 4,
    "cosparse.compiler.packer": 4,
    "cosparse.compiler.quantize": 4,
    "cosparse.compiler.order": 4,
    "cosparse.compiler.folding": 4,
    "cosparse.compiler.formats": 4,
    "cosparse.compiler.lower": 4,
    "cosparse.compiler.perf": 4,
    "cosparse.compiler.fold": 4,
    "cosparse.compiler.area": 4,
    "cosparse.compiler.zoo": 4,
    "cosparse.compiler.fidelity": 4,
    "cosparse.compiler.emit": 4,
    "cosparse.sim": 5,
    "cosparse.boards": 6,
    "cosparse.compiler.api": 7,
    "cosparse.compiler.build": 7,
    "cosparse.compiler.cli": 7,
    "cosparse.compiler.demo": 7,
    "cosparse.compiler.bench": 7,
    "cosparse.examples": 7,
    "cosparse.train": 7,
}

#: Modules that a host talking to a board needs: pure Python, no Amaranth.
HOST_ONLY = ["cosparse.boards.runtime", "cosparse.hw.protocol", "cosparse.compiler.images"]


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "__init__.py" and not imports_of(pkg, path):
                continue  # a package marker: nothing to place
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def layer_of(module: str) -> int | None:
    best = None
    for name, layer in LAYERS.items():
        if module == name or module.startswith(name + "."):
            if best is None or len(name) > len(best[0]):
                best = (name, layer)
    return None if best is None else best[1]


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every cosparse import in ``path``, resolved to absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import mod`` names a module when ``pkg.mod`` is one.
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.startswith("cosparse.")]


def resolve(name: str, known: dict[str, Path]) -> str:
    """The module an imported name lives in (``cosparse.compiler.ir.Network`` -> the ir module)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_every_module_is_placed_in_a_layer():
    unplaced = [m for m in modules() if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_every_module_imports_only_from_its_layer_or_below():
    known = modules()
    wrong = []
    for module, path in known.items():
        own = layer_of(module)
        for line, name in imports_of(module, path):
            target = resolve(name, known)
            if target not in known:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} is not a module")
                continue
            theirs = layer_of(target)
            if theirs is not None and own is not None and theirs > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: layer {own} imports {target} "
                             f"(layer {theirs})")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_the_hardware_library_takes_no_compiler_objects():
    known = modules()
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name}"
             for module, path in known.items() if layer_of(module) == 2
             for line, name in imports_of(module, path)
             if name.startswith(("cosparse.compiler", "cosparse.sim", "cosparse.boards"))]
    assert not wrong, wrong


@pytest.mark.parametrize("module", HOST_ONLY)
def test_host_side_modules_import_no_amaranth(module):
    code = (f"import sys, {module}; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('amaranth', 'cocotb'));"
            "print(bad); sys.exit(1 if bad else 0)")
    if module not in modules():
        pytest.fail(f"{module} does not exist")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, f"{module} imports {run.stdout.strip()} {run.stderr[-500:]}"


def test_the_checker_sees_a_violation(tmp_path):
    """The resolution the checks rely on: relative imports, and names of modules."""
    path = tmp_path / "mod.py"
    path.write_text("from ..compiler.ir import Network\nfrom . import streams\n"
                    "def f():\n    from cosparse.boards import top\n")
    found = [name for _, name in imports_of("cosparse.hw.mod", path)]
    assert found == ["cosparse.compiler.ir.Network", "cosparse.hw.streams",
                     "cosparse.boards.top"]
    known = modules()
    assert resolve("cosparse.compiler.ir.Network", known) == "cosparse.compiler.ir"
    assert layer_of("cosparse.boards.top") == 6 > layer_of("cosparse.hw.mod") == 2
