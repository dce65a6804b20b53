#!/usr/bin/env bash
# The package a user installs:
#  1. `python -m build` makes the sdist and the wheel; .ci/check_dist.py checks their contents.
#  2. The wheel alone (no editable mode) in a throwaway venv that reuses the project venv's
#     packages: the three import names come from the wheel, nothing lands top-level.
#  3. tests/test_packaging_wheel.py: the runtime-only install (edge-ser[onnx], lock-pinned) in a
#     fresh venv predicts with an ONNX artifact, on this interpreter and on every other Python
#     3.11-3.13 found here (PATH, then pyenv).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== build sdist + wheel"
.venv/bin/python -m build --no-isolation --outdir "$tmp/dist" . >/dev/null
.venv/bin/python .ci/check_dist.py "$tmp"/dist/*.whl "$tmp"/dist/*.tar.gz

echo "== wheel install (no deps) next to the project venv's stack"
python3 -m venv "$tmp/venv"
# Reuse the already-installed stack (no second torch download), then the wheel alone.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site" > "$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/edge_ser_stack.pth"
"$tmp/venv/bin/pip" install --quiet --no-deps "$tmp"/dist/*.whl
(cd "$tmp" && "$tmp/venv/bin/python" - <<'PY'
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
)

echo "== runtime-only install on each Python here"
own=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
others=()
for version in 3.11 3.12 3.13; do
  [ "$version" = "$own" ] && continue
  found=$(command -v "python$version" || true)
  # A pyenv shim is on PATH even where that version is not selected: keep only one that runs.
  if [ -n "$found" ] && ! "$found" -c 'import sys' >/dev/null 2>&1; then found=""; fi
  if [ -z "$found" ] && command -v pyenv >/dev/null; then
    found=$(ls -d "$(pyenv root)"/versions/"$version".*/bin/"python$version" 2>/dev/null | sort -V | tail -1 || true)
  fi
  if [ -n "$found" ]; then
    echo "python$version: $found"
    others+=("$found")
  else
    echo "python$version: not found on PATH or in pyenv; not tested"
  fi
done
EDGE_SER_WHEEL_PYTHONS=$(IFS=:; echo "${others[*]:-}") \
  .venv/bin/python -m pytest -q tests/test_packaging_wheel.py
