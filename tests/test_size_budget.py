"""The size budget of the scripts, printed and enforced so it cannot creep back (blank lines and docstrings
included): main() ≤ 120 lines and no other function over 60, each fork's ALGORITHM sections ≤ 250 lines,
eval_math.py ≤ 600. The SHARED sections were cut from 1,329 to 1,123, then 963 lines; the goal of 800 (grpo.py
850) was not reached, so the ceilings below are the lines reached: a change can only shrink them."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["grpo.py", "opefo.py", "steer.py", "clip_cov.py", "adaptive_clip.py"]
SHARED_MAX = 963  # goal: 800
OUTSIDE_ALGORITHM_MAX = 1015  # module docstring + SHARED sections of any script (goal: 850)
BANNER = re.compile(r"^# ─── (SHARED|ALGORITHM): (.+?) ─+$", re.M)


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
    problems, rows = [], []
    for script in SCRIPTS + ["eval_math.py"]:
        text = (REPO / script).read_text()
        total, sections, functions = text.count("\n"), section_lines(text), function_lengths(text)
        long = {name: n for name, n in functions.items() if n > (120 if name == "main" else 60)}
        rows.append(
            f"{script:17s} {total:5d} lines  SHARED {sections['SHARED']:4d}  ALGORITHM {sections['ALGORITHM']:4d}"
            f"  main() {functions.get('main', 0):3d}  definitions {len(functions):3d}  longest others: "
            + ", ".join(f"{k} {v}" for k, v in sorted(functions.items(), key=lambda kv: -kv[1]) if k != "main")[:60]
        )
        if script == "eval_math.py":
            problems += [f"eval_math.py: {total} lines > 600"] if total > 600 else []
        else:
            outside = total - sections["ALGORITHM"]
            problems += (
                [f"{script}: {outside} lines outside ALGORITHM > {OUTSIDE_ALGORITHM_MAX}"]
                if outside > OUTSIDE_ALGORITHM_MAX
                else []
            )
            problems += (
                [f"{script}: SHARED {sections['SHARED']} > {SHARED_MAX}"] if sections["SHARED"] > SHARED_MAX else []
            )
            problems += (
                [f"{script}: ALGORITHM {sections['ALGORITHM']} > 250"]
                if script != "grpo.py" and sections["ALGORITHM"] > 250
                else []
            )
        problems += [f"{script}: {name}() {n} lines" for name, n in long.items()]
    print("\n" + "\n".join(rows))
    assert not problems, problems
