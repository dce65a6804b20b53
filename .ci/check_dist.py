"""Check what `python -m build` made: python .ci/check_dist.py dist/edge_ser-*.whl dist/edge_ser-*.tar.gz

The wheel holds three import names (edge_ser, edge_ser.converters, edge_ser.runtime) as Python
sources only, nothing top-level besides edge_ser, no tests and no data; its base requirements
are the runtime's; its version is edge_ser.__version__ and has a CHANGELOG.md entry. The sdist
holds the same sources plus the build files, and no tests, benchmarks, examples, docs or data.
Prints one line per finding and exits 1 if there is any; used by tests/test_packaging_wheel.py
and .ci/wheel_check.sh.
"""

from __future__ import annotations

import email.parser
import re
import sys
import tarfile
import zipfile
from pathlib import PurePosixPath

IMPORT_NAMES = ("edge_ser", "edge_ser.converters", "edge_ser.runtime")
SOURCE_FOLDERS = ("edge_ser", "converters", "runtime")  # in the sdist (pyproject's package-dir)
BASE_REQUIREMENTS = {"numpy", "soundfile", "soxr", "click"}
SDIST_TOP_FILES = {"PKG-INFO", "pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in", "setup.cfg"}
DATA_SUFFIXES = (".wav", ".flac", ".mp3", ".npy", ".npz", ".pt", ".pth", ".onnx", ".pte", ".mlpackage", ".bin",
                 ".safetensors", ".parquet", ".csv", ".jsonl", ".png")
MAX_WHEEL_BYTES = 2_000_000  # ~0.3 MB today; a jump means something that is not source got in


def _version_in_source(text: str) -> str | None:
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1) if match else None


def _is_test(path: PurePosixPath) -> bool:
    return any(part in ("tests", "test", "benchmarks") for part in path.parts) or path.name == "conftest.py" \
        or path.name.startswith(("test_", "bench_"))


def check_wheel(path: str) -> list[str]:
    problems: list[str] = []
    with zipfile.ZipFile(path) as wheel:
        names = [PurePosixPath(n) for n in wheel.namelist()]
        dist_info = [n for n in names if n.parts[0].endswith(".dist-info")]
        if not dist_info:
            return [f"{path}: no .dist-info folder; is this a wheel?"]
        info_dir = dist_info[0].parts[0]
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info_dir}/METADATA").decode())
        entry_points = wheel.read(f"{info_dir}/entry_points.txt").decode()
        init_text = wheel.read("edge_ser/__init__.py").decode() if "edge_ser/__init__.py" in wheel.namelist() else ""
        size = sum(i.file_size for i in wheel.infolist())
    tops = {n.parts[0] for n in names}
    if tops != {"edge_ser", info_dir}:
        problems.append(f"wheel top level is {sorted(tops)}; expected only edge_ser/ and {info_dir}/")
    packages = {".".join(n.parent.parts) for n in names if n.name == "__init__.py"}
    for name in IMPORT_NAMES:
        if name not in packages:
            problems.append(f"wheel lacks the import name {name} (no {name.replace('.', '/')}/__init__.py)")
    for name in names:
        if name.parts[0] != "edge_ser":
            continue
        if _is_test(name):
            problems.append(f"wheel holds a test or benchmark: {name}")
        elif name.suffix != ".py" and name.name != "py.typed":
            problems.append(f"wheel holds a non-source file: {name}")
    if size > MAX_WHEEL_BYTES:
        problems.append(f"wheel unpacks to {size} bytes; expected under {MAX_WHEEL_BYTES} (sources only)")
    version = _version_in_source(init_text)
    if version is None or metadata["Version"] != version:
        problems.append(f"wheel Version {metadata['Version']} != edge_ser.__version__ {version}")
    base = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in metadata.get_all("Requires-Dist") or []
            if "extra ==" not in r}
    if base != BASE_REQUIREMENTS:
        problems.append(f"wheel base requirements are {sorted(base)}; expected the runtime's {sorted(BASE_REQUIREMENTS)}")
    if "edge-ser = edge_ser.cli:main" not in entry_points:
        problems.append("wheel has no `edge-ser = edge_ser.cli:main` console script")
    return problems


def check_sdist(path: str) -> list[str]:
    problems: list[str] = []
    with tarfile.open(path) as sdist:
        members = [m for m in sdist.getmembers() if m.isfile()]
        root = members[0].name.split("/")[0]
        names = [PurePosixPath(m.name).relative_to(root) for m in members]
        changelog = sdist.extractfile(f"{root}/CHANGELOG.md").read().decode() \
            if PurePosixPath("CHANGELOG.md") in names else ""
        init_text = sdist.extractfile(f"{root}/edge_ser/__init__.py").read().decode() \
            if PurePosixPath("edge_ser/__init__.py") in names else ""
    for name in names:
        if len(name.parts) == 1:
            if name.name not in SDIST_TOP_FILES:
                problems.append(f"sdist holds an unexpected top-level file: {name}")
        elif name.parts[0].endswith(".egg-info"):
            continue
        elif name.parts[0] not in SOURCE_FOLDERS:
            problems.append(f"sdist holds {name}; expected only {', '.join(SOURCE_FOLDERS)} and build files")
        elif _is_test(name) or name.suffix in DATA_SUFFIXES or name.suffix != ".py":
            problems.append(f"sdist holds a test, data or non-source file: {name}")
    version = _version_in_source(init_text)
    if version is None or not root.endswith(f"-{version}"):
        problems.append(f"sdist folder {root} does not carry edge_ser.__version__ {version}")
    if version and not re.search(rf"^## \[?{re.escape(version)}\]?", changelog, re.M):
        problems.append(f"CHANGELOG.md (in the sdist) has no `## {version}` entry")
    return problems


def main(argv: list[str]) -> int:
    wheels = [a for a in argv if a.endswith(".whl")]
    sdists = [a for a in argv if a.endswith(".tar.gz")]
    if len(wheels) != 1 or len(sdists) != 1 or len(argv) != 2:
        print(f"usage: check_dist.py WHEEL SDIST (got {argv}); expected one .whl and one .tar.gz", file=sys.stderr)
        return 2
    problems = check_wheel(wheels[0]) + check_sdist(sdists[0])
    for problem in problems:
        print(problem)
    if not problems:
        print(f"dist OK: {wheels[0]}, {sdists[0]}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
