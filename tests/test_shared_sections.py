"""The algorithm scripts share their boilerplate verbatim: `diff grpo.py opefo.py` shows only the algorithm."""

import ast
import re
from pathlib import Path

import pytest
from conftest import PRESENT_SCRIPTS

REPO = Path(__file__).resolve().parents[1]
BANNER = re.compile(r"^# ─── (SHARED|ALGORITHM): (.+?) ─+$", re.M)
REQUIRED = [  # execution order: what runs first comes first; run management last
    ("SHARED", "imports"),
    ("SHARED", "arguments"),
    ("ALGORITHM", "arguments"),
    ("ALGORITHM", "loss"),
    ("SHARED", "token statistics and loss"),
    ("SHARED", "update"),
    ("SHARED", "rollout"),
    ("SHARED", "main loop"),
    ("SHARED", "run management"),
]


def sections(path: Path) -> list[tuple[str, str, str]]:
    text = path.read_text()
    marks = list(BANNER.finditer(text))
    return [
        (m.group(1), m.group(2), text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)])
        for i, m in enumerate(marks)
    ]


def test_grpo_has_every_section_in_order():
    assert [(kind, name) for kind, name, _ in sections(REPO / "grpo.py")] == REQUIRED


@pytest.mark.parametrize("script", PRESENT_SCRIPTS)
def test_shared_sections_identical_to_grpo(script):
    reference = {name: body for kind, name, body in sections(REPO / "grpo.py") if kind == "SHARED"}
    mine = sections(REPO / script)
    assert [(k, n) for k, n, _ in mine] == REQUIRED, f"{script}: banners differ from grpo.py"
    for kind, name, body in mine:
        if kind == "SHARED":
            assert body == reference[name], f"{script}: SHARED section '{name}' drifted from grpo.py"


@pytest.mark.parametrize("script", [*PRESENT_SCRIPTS, "eval_math.py", "plot.py"])
def test_every_argument_has_a_help_text(script):
    """Every field of the argument dataclasses has its --help text: a comment on its line or a docstring below it."""
    text = (REPO / script).read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    classes = [
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef) and any(getattr(d, "id", None) == "dataclass" for d in n.decorator_list)
    ]
    expected = {"Args", "Algorithm"} if script in PRESENT_SCRIPTS else {"Args"}
    assert expected <= {c.name for c in classes}, f"{script}: no {expected} dataclasses"
    for cls in classes:
        for i, node in enumerate(cls.body):
            if isinstance(node, ast.AnnAssign):
                nxt = cls.body[i + 1] if i + 1 < len(cls.body) else None
                documented = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                commented = "  # " in lines[node.end_lineno - 1]
                assert documented or commented, f"{script}: {cls.name}.{node.target.id} has no help text"
