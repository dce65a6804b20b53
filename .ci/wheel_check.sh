#!/usr/bin/env bash
# Build a wheel, install it (no editable mode) into a throwaway venv that reuses the
# project venv's packages, and import the three public names from outside the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m build --wheel --no-isolation --outdir "$tmp/dist" . >/dev/null
python3 -m venv "$tmp/venv"
# Reuse the already-installed stack (no second torch download), then the wheel alone.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site" > "$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/edge_ser_stack.pth"
"$tmp/venv/bin/pip" install --quiet --no-deps "$tmp"/dist/*.whl
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import importlib, importlib.util, pathlib, sys
for name in ("edge_ser", "edge_ser.converters", "edge_ser.runtime"):
    mod = importlib.import_module(name)
    assert str(pathlib.Path(mod.__file__).resolve()).startswith(str(pathlib.Path(sys.prefix).resolve())), (
        f"{name} imported from {mod.__file__}, not from the wheel in {sys.prefix}")
    print(f"{name}: {mod.__file__}")
venv_site = pathlib.Path(sys.prefix)
for top in ("converters", "runtime"):
    found = list(venv_site.glob(f"lib/python*/site-packages/{top}"))
    assert not found, f"top-level {top} installed: {found}"
print("wheel install OK")
PY
