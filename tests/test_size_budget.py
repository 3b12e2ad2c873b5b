"""The size budget of the scripts, counted on ruff-formatted code (CI refuses unformatted code; the test formats the
text itself, so the figures hold even before that check) and printed: main() ≤ 130 lines and no other function
over 60, each fork's ALGORITHM sections ≤ 300 lines, eval_math.py ≤ 850. The SHARED sections were 1,330 formatted
lines when the budget moved to formatted code; unpacking them for readability (one statement per line, hooks, run
management last) took them to 1,459, and the features added since (start-up and GPU checks, the adaptive entropy
coefficient, mechanism metrics, keyed sampling noise, reference-model preparation and collective checkpoint errors)
to the ceiling below. The goal is 1,250, missed: a change may only shrink the ceiling, never by packing statements
(1856 had been reached so: a log record, the console line's labels and wandb.init's arguments, written out again)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import SCRIPTS

REPO = Path(__file__).resolve().parents[1]
SHARED_MAX = 1875  # goal 1,250 missed; 1856 had 3 statements packed to fit (unpacked again: +19)
EVAL_MATH_MAX = 850
BANNER = re.compile(r"^# ─── (SHARED|ALGORITHM): (.+?) ─+$", re.M)


def formatted(path: Path) -> str:
    """The file as `ruff format` writes it (pyproject.toml's settings)."""
    command = [sys.executable, "-m", "ruff", "format", "--stdin-filename", path.name, "-"]
    return subprocess.run(command, input=path.read_text(), capture_output=True, text=True, check=True, cwd=REPO).stdout


def section_lines(text: str) -> dict[str, int]:
    marks = list(BANNER.finditer(text))
    out = {"SHARED": 0, "ALGORITHM": 0}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out[m.group(1)] += text[m.start() : end].count("\n")
    return out


def function_lengths(text: str) -> dict[str, int]:
    tree = ast.parse(text)
    return {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_size_budget():
    problems = []
    rows = []
    for script in [*SCRIPTS, "eval_math.py"]:
        text = formatted(REPO / script)
        total = text.count("\n")
        sections = section_lines(text)
        functions = function_lengths(text)
        longest = sorted(((n, name) for name, n in functions.items() if name != "main"), reverse=True)[:3]
        rows.append(
            f"{script:17s} {total:5d} lines  SHARED {sections['SHARED']:4d}  ALGORITHM {sections['ALGORITHM']:4d}  "
            f"main() {functions.get('main', 0):3d}  longest others: " + ", ".join(f"{name} {n}" for n, name in longest)
        )
        for name, n in functions.items():
            if n > (130 if name == "main" else 60):
                problems.append(f"{script}: {name}() {n} lines")
        if script == "eval_math.py":
            if total > EVAL_MATH_MAX:
                problems.append(f"eval_math.py: {total} lines > {EVAL_MATH_MAX}")
            continue
        if sections["SHARED"] > SHARED_MAX:
            problems.append(f"{script}: SHARED {sections['SHARED']} > {SHARED_MAX}")
        if sections["ALGORITHM"] > 300:
            problems.append(f"{script}: ALGORITHM {sections['ALGORITHM']} > 300")
    print("\n" + "\n".join(rows))
    assert not problems, problems
