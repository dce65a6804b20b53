"""The package frame: import names, pyproject package list, CLI entry points."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

import edge_ser
from edge_ser.cli import root

REPO = Path(__file__).resolve().parents[1]


def test_three_import_names():
    import edge_ser.converters
    import edge_ser.runtime

    assert Path(edge_ser.converters.__file__).parent.name == "converters"
    assert Path(edge_ser.runtime.__file__).parent.name == "runtime"


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    expected = set()
    for top_name, folder in (("edge_ser", "edge_ser"), ("edge_ser.converters", "converters"),
                             ("edge_ser.runtime", "runtime")):
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = ".".join((top_name, *rel.parts)) if rel.parts else top_name
            expected.add(name)
    missing = expected - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert mapping["edge_ser.converters"] == "converters" and mapping["edge_ser.runtime"] == "runtime"


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(root, ["--version"])
    assert result.exit_code == 0 and edge_ser.__version__ in result.output
    result = runner.invoke(root, ["--help"])
    assert result.exit_code == 0 and "data" in result.output


def test_lock_pins_cpu_torch():
    lock = (REPO / "requirements" / "lock.txt").read_text().splitlines()
    assert "torch==2.13.0" in lock, "torch must stay pinned to the on-disk CPU wheel"
    for line in lock:
        if line and not line.startswith("#"):
            assert "==" in line, f"unpinned requirement in lock: {line}"


# ---------------------------------------------------------------------------------------
# Extras: what each command needs, and the message when it is missing

def test_command_table_matches_what_each_module_registers():
    import importlib

    import click

    from edge_ser.cli import COMMAND_MODULES
    from edge_ser.cli.extras import installed_extras

    extras = installed_extras()
    for module_name, commands in COMMAND_MODULES.items():
        group = click.Group("probe")
        importlib.import_module(module_name).register(group)
        assert set(group.commands) == set(commands), (
            f"{module_name} registers {sorted(group.commands)}; COMMAND_MODULES lists {sorted(commands)}")
        for command, extra in commands.items():
            assert extra is None or extra in extras, f"{command}: extra {extra!r} is not in pyproject.toml"
    assert set(root.commands) == {name for commands in COMMAND_MODULES.values() for name in commands}


def test_extras_are_read_from_the_installed_metadata_with_nested_extras_expanded():
    from edge_ser.cli.extras import parse_extras

    extras = parse_extras([
        "numpy<3,>=2.4.6",
        'onnxruntime<2,>=1.32.0; extra == "onnx"',
        'torch<2.14,>=2.13.0; extra == "train"',
        'Huggingface_Hub>=2.4; extra == "train"',
        'edge-ser[onnx,train]; extra == "convert"',
        'onnx>=1.23.2; extra == "convert"',
        'edge-ser[convert]; extra == "all"',
    ])
    assert extras["onnx"] == {"onnxruntime"}
    assert extras["train"] == {"torch", "huggingface-hub"}
    assert extras["convert"] == {"onnxruntime", "torch", "huggingface-hub", "onnx"}
    assert extras["all"] == extras["convert"]
    assert "numpy" not in set().union(*extras.values())


def test_installed_extras_match_pyproject():
    from edge_ser.cli.extras import installed_extras, normalize

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(installed_extras()) == set(declared), "reinstall (make setup): the installed metadata is stale"
    assert {"onnx", "executorch", "train", "convert", "all", "dev", "whisper-base"} <= set(declared)
    base = {normalize(r.split("<")[0].split(">")[0].split("=")[0]) for r in
            tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert base == {"numpy", "soundfile", "soxr", "click"}, "the base install is the runtime only"


def test_the_extra_named_for_a_missing_module():
    from edge_ser.cli.extras import distribution_of_module, extra_for

    extras = {"onnx": frozenset({"onnxruntime"}), "executorch": frozenset({"executorch", "torch"}),
              "train": frozenset({"torch", "pandas", "scikit-learn"}),
              "all": frozenset({"onnxruntime", "executorch", "torch", "pandas", "scikit-learn"})}
    assert distribution_of_module("sklearn.metrics") == "scikit-learn"
    assert distribution_of_module("huggingface_hub") == "huggingface-hub"
    assert extra_for("torch.nn", "train", extras) == "train"  # the command's own extra when it has it
    assert extra_for("torch", None, extras) == "executorch"  # else the smallest that has it
    assert extra_for("onnxruntime", "train", extras) == "onnx"
    assert extra_for("sklearn", None, extras) == "train"
    assert extra_for("not_a_dependency", "train", extras) == "train"
    assert extra_for("not_a_dependency", None, extras) is None


def _group_with(command):
    import click

    group = click.Group("edge-ser")
    group.add_command(command)
    return group


def test_a_command_whose_dependency_is_missing_names_the_extra():
    import click

    from edge_ser.cli.extras import MissingExtraError, guard_command

    @click.command("train")
    def train():
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    guard_command(train, "train")
    result = CliRunner().invoke(_group_with(train), ["train"])
    assert isinstance(result.exception, MissingExtraError), result.output
    assert "pip install 'edge-ser[train]'" in str(result.exception) and "'torch'" in str(result.exception)

    @click.command("predict")
    def predict():
        raise ModuleNotFoundError("No module named 'edge_ser.gone'", name="edge_ser.gone")

    guard_command(predict, None)
    result = CliRunner().invoke(_group_with(predict), ["predict"])
    assert type(result.exception) is ModuleNotFoundError, "a missing edge-ser module is a bug, not an extra"


def test_a_command_whose_module_cannot_be_imported_stays_listed_and_refuses_any_arguments():
    from edge_ser.cli.extras import MissingExtraError, needs_extra_command

    group = _group_with(needs_extra_command("train", "train", "torch"))
    listing = CliRunner().invoke(group, ["--help"])
    assert listing.exit_code == 0 and "train" in listing.output and "edge-ser[train]" in listing.output
    result = CliRunner().invoke(group, ["train", "--features", "x", "--folds", "all"])
    assert isinstance(result.exception, MissingExtraError)
    assert str(result.exception).startswith("edge-ser train needs the [train] extra")


def test_main_prints_the_missing_extra_as_one_error_line(monkeypatch, capsys):
    import pytest

    from edge_ser import cli
    from edge_ser.cli.extras import needs_extra_command

    monkeypatch.setitem(cli.root.commands, "train", needs_extra_command("train", "train", "torch"))
    monkeypatch.setattr("sys.argv", ["edge-ser", "train", "--features", "x"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["Error: edge-ser train needs the [train] extra (module 'torch' is not installed). "
                   "Install it with: pip install 'edge-ser[train]'"]


def test_importing_the_runtime_pulls_in_no_torch():
    """``import edge_ser.runtime`` (and the audio helpers) in a process where torch *is* installed."""
    import subprocess
    import sys

    heavy = ("torch", "torchao", "executorch", "transformers", "pandas", "coremltools", "onnx", "matplotlib")
    code = ("import sys, edge_ser.runtime, edge_ser.audio, edge_ser.runtime.latency\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the runtime import pulled in {out.strip()}"


def _locked_versions() -> dict[str, str]:
    from edge_ser.cli.extras import normalize

    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name)] = version
    return pins


def _declared_requirements():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for group, lines in [("dependencies", project["dependencies"]), *project["optional-dependencies"].items()]:
        for line in lines:
            yield group, Requirement(line)


def test_every_range_starts_at_the_locked_version_it_was_tested_with():
    from edge_ser.cli.extras import normalize

    pins = _locked_versions()
    for group, req in _declared_requirements():
        name = normalize(req.name)
        if name == "edge-ser":
            continue
        assert name in pins, f"{req} ([{group}]) is not pinned in requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} ([{group}]) excludes the locked {pins[name]}"
        lower = [s.version for s in req.specifier if s.operator in (">=", "==")]
        assert lower == [pins[name]], f"{req} ([{group}]): the lower bound must be the tested (locked) {pins[name]}"


def test_no_range_admits_a_torch_that_is_cuda_only_on_the_registry():
    torch_reqs = [(group, req) for group, req in _declared_requirements() if req.name == "torch"]
    assert torch_reqs, "torch is declared in no extra"
    for group, req in torch_reqs:
        assert req.specifier.contains("2.13.0+cpu") and req.specifier.contains("2.13.0"), (group, str(req))
        assert not req.specifier.contains("2.14.0"), f"[{group}] {req} admits torch 2.14 (a CUDA build on PyPI)"
