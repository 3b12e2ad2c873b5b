#!/usr/bin/env bash
# Download the wheels the lent GPU machine lacks into .whl/ at the repository root (git-ignored), for
# benchmarks/gpu_check.sh to install there without a network. Run it here, where PyPI is reachable:
#
#     bash benchmarks/fetch_gpu_wheels.sh          # then carry .whl to the GPU machine with the working tree
#
# The GPU machine (Python 3.12, torch 2.11.0+cu130, transformers 5.17.0, accelerate 1.15.0, numpy, pyarrow,
# tensorboard, tqdm, matplotlib; torch brings sympy and mpmath) has none of the packages below. They are the
# scripts' argument parser (tyro and what it requires) and the grader (math-verify and what it requires);
# typing-extensions is carried too, because tyro and typeguard need a recent one (>= 4.14) and torch only asks
# for >= 4.10. All are pure-Python wheels; the platform flags only keep pip from picking anything else.
# One pinned version each; .whl/ is emptied of other wheels first. Fails when the total is over 64 MiB (the limit
# on what travels with the working tree).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/.whl"
PYTHON="${PYTHON:-python3}"
LIMIT_MIB=64

WHEELS=(
    tyro==1.0.17
    docstring-parser==0.18.0
    typeguard==4.6.1
    typing-extensions==4.16.0
    math-verify==0.9.0
    latex2sympy2-extended==1.11.0
    antlr4-python3-runtime==4.13.2
)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"

count=$(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "error: expected ${#WHEELS[@]} wheels in $DEST, found $count" >&2
    exit 1
fi
find "$DEST" -maxdepth 1 -type f -name '*.whl' -printf '%s %f\n' | sort -k2 | awk '{printf "  %8.1f KiB  %s\n", $1 / 1024, $2}'
bytes=$(find "$DEST" -maxdepth 1 -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
mib=$(awk -v b="$bytes" 'BEGIN {printf "%.2f", b / 1048576}')
echo "$count wheels in $DEST, $mib MiB in total (limit $LIMIT_MIB MiB)"
if [ "$bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "error: $mib MiB is over the $LIMIT_MIB MiB that travels with the working tree" >&2
    exit 1
fi
