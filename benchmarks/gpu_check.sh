#!/usr/bin/env bash
# The GPU check in one command, for the lent GPU machine (no network; Python 3.12 with torch, transformers,
# accelerate, numpy, pyarrow, tensorboard, tqdm and matplotlib, but not tyro nor math-verify):
#
#     bash benchmarks/gpu_check.sh                 # 5 scripts x 2 models x 20 steps, bf16: 8 minutes at most
#     bash benchmarks/gpu_check.sh --tiny          # the CPU smoke test (also the rehearsal here, see the README)
#
# It installs the wheels carried in .whl/ (from benchmarks/fetch_gpu_wheels.sh, run where PyPI is reachable) into
# a temporary folder, without the network or dependencies, puts that folder first on PYTHONPATH, prints the
# versions it will run with, and runs benchmarks/gpu_check.py with the arguments given (its exit status is this
# script's). PYTHON picks the interpreter (default python3); WHEELS_DIR the wheels' folder (default .whl/).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS_DIR="${WHEELS_DIR:-$REPO/.whl}"

shopt -s nullglob
wheels=("$WHEELS_DIR"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_check.sh: no wheels in $WHEELS_DIR: run 'bash benchmarks/fetch_gpu_wheels.sh' (needs PyPI) and carry" \
        ".whl with the working tree" >&2
    exit 2
fi

SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${wheels[@]}"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_check.sh: installed ${#wheels[@]} wheels from $WHEELS_DIR into $SITE (first on PYTHONPATH)"

# What the check will import, with versions (from the packages' metadata, nothing imported): a missing one fails here
GPU_CHECK_SITE="$SITE" "$PYTHON" - <<'EOF'
import os
import sys
from importlib.metadata import PackageNotFoundError, distribution

names = ["torch", "transformers", "accelerate", "numpy", "pyarrow", "tensorboard", "tqdm", "sympy", "tyro",
         "docstring-parser", "typeguard", "typing-extensions", "math-verify", "latex2sympy2-extended",
         "antlr4-python3-runtime"]
found, missing = [], []
for name in names:
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        missing.append(name)
        continue
    carried = os.path.realpath(dist.locate_file("")) == os.path.realpath(os.environ["GPU_CHECK_SITE"])
    found.append(f"{name} {dist.version}" + (" (carried)" if carried else ""))
print(f"gpu_check.sh: Python {sys.version.split()[0]}; " + ", ".join(found))
if missing:
    sys.exit("gpu_check.sh: missing: " + ", ".join(missing) + " (add a wheel to benchmarks/fetch_gpu_wheels.sh)")
EOF

cd "$REPO"
status=0
"$PYTHON" benchmarks/gpu_check.py "$@" || status=$?
exit "$status"
