"""The layer graph of docs/architecture.md holds: no module imports a higher layer.

Every ``import`` and ``from ... import`` in the source tree is read with :mod:`ast` (those
inside functions too: a lazy import is still a dependency), mapped to the package it names,
and checked against :data:`LAYERS`. A module may import its own layer and the layers below.

``python tests/test_layers.py`` prints the package -> imported packages table.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS: dict[str, Path] = {
    "edge_ser": ROOT / "edge_ser",
    "edge_ser.converters": ROOT / "converters",
    "edge_ser.runtime": ROOT / "runtime",
}
"""Import name -> folder (pyproject.toml maps converters/ and runtime/ under edge_ser)."""

LAYERS: tuple[tuple[str, ...], ...] = (
    # 0, shared by everything: constants, errors, files, audio I/O, progress, and the numpy-only
    # metrics (CCC, UAR, ...) that training, evaluation and the runtime's parity check all use.
    ("edge_ser", "edge_ser.errors", "edge_ser.labels", "edge_ser.io", "edge_ser.progress", "edge_ser.quiet",
     "edge_ser.cpu_features", "edge_ser.output_folder", "edge_ser.audio", "edge_ser.metrics", "edge_ser.windowing"),
    # 1, the deployable shim: artifact reader, runners, parity, latency (numpy, no torch at import).
    ("edge_ser.runtime",),
    # 2-6, the research stages in data-flow order.
    ("edge_ser.data", "edge_ser.frontend"),
    ("edge_ser.fm",),
    ("edge_ser.features", "edge_ser.saliency"),
    ("edge_ser.train",),
    ("edge_ser.evaluation",),
    # 7, export: fused model, export-only model forms, quantization, backends, verification.
    ("edge_ser.converters",),
    # 8, applications of the library.
    ("edge_ser.model_card", "edge_ser.demo", "edge_ser.cli"),
)


def package_of(module: str) -> str | None:
    """The entry of :data:`LAYERS` that ``module`` belongs to (longest matching prefix), or None."""
    best = None
    for layer in LAYERS:
        for package in layer:
            if (module == package or module.startswith(package + ".")) and (best is None or len(package) > len(best)):
                best = package
    return best


def layer_of(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def source_modules() -> dict[str, Path]:
    """Every module of the source tree: dotted import name -> file."""
    modules: dict[str, Path] = {}
    for name, folder in SOURCE_FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            dotted = ".".join((name, *parts))
            if name == "edge_ser" and parts and parts[0] in ("converters", "runtime"):
                continue  # not a package of edge_ser/ (the mapped folders are read above)
            modules[dotted] = path
    return modules


def imported_modules(module: str, path: Path) -> set[str]:
    """The edge_ser modules that ``module`` (file ``path``) imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from edge_ser import metrics` names a module, not a symbol of edge_ser/__init__.py
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "edge_ser" or name.startswith("edge_ser.")}


def import_table() -> dict[str, set[str]]:
    """Package of :data:`LAYERS` -> the other packages its modules import."""
    table: dict[str, set[str]] = {package: set() for layer in LAYERS for package in layer}
    known = set(source_modules())
    for module, path in source_modules().items():
        source = package_of(module)
        for target in imported_modules(module, path):
            if target not in known and target.rsplit(".", 1)[0] in known:
                target = target.rsplit(".", 1)[0]  # a symbol imported from a module
            if target not in known:
                continue
            package = package_of(target)
            if package is not None and package != source:
                table[source].add(package)
    return table


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in source_modules() if package_of(m) is None)
    assert not unplaced, (f"modules {unplaced} are in no layer; add their package to LAYERS in tests/test_layers.py "
                          "and to the layer list in docs/architecture.md")


def test_no_module_imports_a_higher_layer():
    known = set(source_modules())
    upward = []
    for module, path in source_modules().items():
        own = layer_of(package_of(module))
        for target in sorted(imported_modules(module, path)):
            if target not in known and target.rsplit(".", 1)[0] in known:
                target = target.rsplit(".", 1)[0]
            package = package_of(target)
            if target in known and package is not None and layer_of(package) > own:
                upward.append(f"{path.relative_to(ROOT)} ({module}, layer {own}) imports {target} "
                              f"(layer {layer_of(package)})")
    assert not upward, "lower layers import higher ones:\n" + "\n".join(upward)


EXPORT_TOOLCHAINS = ("torchao", "executorch", "coremltools", "onnx", "onnxruntime", "onnxscript")
TOOLCHAIN_USERS = ("edge_ser.converters", "edge_ser.runtime", "edge_ser.quiet")
"""Who may import an export toolchain: the converters, the runtime's runners, and edge_ser.quiet
(which tames their log noise). Training and evaluation never need one."""


def test_export_toolchains_stay_in_the_export_layers():
    misplaced = []
    for module, path in source_modules().items():
        if package_of(module) in TOOLCHAIN_USERS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            misplaced += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in EXPORT_TOOLCHAINS]
    assert not misplaced, ("export toolchains imported outside the converters/runtime (move the export-only code to "
                           "edge_ser.converters):\n" + "\n".join(misplaced))


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The check is only as good as its parser: a function-level and a relative import count."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from edge_ser.train import runs\n\nfrom .model import load\n")
    assert imported_modules("edge_ser.runtime.probe", path) == {
        "edge_ser.train", "edge_ser.train.runs", "edge_ser.runtime.model", "edge_ser.runtime.model.load"}


def test_runtime_and_train_package_import_light():
    """`import edge_ser.runtime` loads no torch (an app ships only the runtime), and importing the
    run-folder reader does not pull in the trainer, evaluation or the converters."""
    script = ("import sys, edge_ser.runtime, edge_ser.runtime.parity\n"
              "assert 'torch' not in sys.modules, 'edge_ser.runtime imported torch'\n"
              "import edge_ser.train.runs\n"
              "heavy = sorted(m for m in sys.modules if m.startswith(('edge_ser.train.trainer', 'edge_ser.evaluation',"
              " 'edge_ser.converters')))\n"
              "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def format_table(table: dict[str, set[str]]) -> str:
    lines = ["| layer | package | imports (edge_ser packages) |", "|---|---|---|"]
    for i, layer in enumerate(LAYERS):
        for package in layer:
            imports = ", ".join(sorted(p.removeprefix("edge_ser.") for p in table[package])) or "–"
            lines.append(f"| {i} | {package.removeprefix('edge_ser.') if package != 'edge_ser' else 'edge_ser'} "
                         f"| {imports} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(import_table()))
