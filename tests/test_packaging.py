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
