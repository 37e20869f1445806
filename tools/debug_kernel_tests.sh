#!/usr/bin/env bash
# Build the kernels with bounds checks on (CLSTM_DEBUG_CYTHON=1) in a scratch
# copy of the tree and run the kernel tests against that build, so an
# out-of-bounds access in a kernel fails loudly instead of corrupting memory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root"
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
    [ -e "$f" ] && mkdir -p "$work/$(dirname "$f")" && cp -p "$f" "$work/$f"
done
python -m pip install --quiet "Cython>=3.0.10" numpy scipy setuptools
cd "$work"
CLSTM_DEBUG_CYTHON=1 python setup.py --quiet build_ext --inplace >/dev/null
# -p no:cacheprovider: leave no .pytest_cache behind; PYTHONPATH puts the
# debug build ahead of any installed clstm, and the check below proves it.
PYTHONPATH="$work/src" python - <<PY
import clstm, os
assert clstm.__file__.startswith("$work"), f"debug build not picked up: {clstm.__file__}"
print("debug build:", os.path.dirname(clstm.__file__))
PY
PYTHONPATH="$work/src" python -m pytest -q -p no:cacheprovider -m kernel "$work/tests"
