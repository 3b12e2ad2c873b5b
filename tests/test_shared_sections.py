"""The algorithm scripts share their boilerplate verbatim: `diff grpo.py opefo.py` shows only the algorithm."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["grpo.py", "opefo.py", "steer.py", "clip_cov.py", "adaptive_clip.py"]
BANNER = re.compile(r"^# ─── (SHARED|ALGORITHM): (.+?) ─+$", re.M)
REQUIRED = [
    ("SHARED", "imports"), ("SHARED", "arguments"), ("ALGORITHM", "arguments"),
    ("SHARED", "token statistics and entropy change"), ("SHARED", "advantages and loss aggregation"),
    ("ALGORITHM", "loss"), ("SHARED", "rollout"), ("SHARED", "logging, evaluation, checkpoints"), ("SHARED", "main loop"),
]


def sections(path: Path) -> list[tuple[str, str, str]]:
    text = path.read_text()
    marks = list(BANNER.finditer(text))
    return [(m.group(1), m.group(2), text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)])
            for i, m in enumerate(marks)]


def present_scripts():
    return [s for s in SCRIPTS if (REPO / s).exists()]


def test_grpo_has_every_section_in_order():
    assert [(kind, name) for kind, name, _ in sections(REPO / "grpo.py")] == REQUIRED


@pytest.mark.parametrize("script", present_scripts())
def test_shared_sections_identical_to_grpo(script):
    reference = {name: body for kind, name, body in sections(REPO / "grpo.py") if kind == "SHARED"}
    mine = sections(REPO / script)
    assert [(k, n) for k, n, _ in mine] == REQUIRED, f"{script}: banners differ from grpo.py"
    for kind, name, body in mine:
        if kind == "SHARED":
            assert body == reference[name], f"{script}: SHARED section '{name}' drifted from grpo.py"


@pytest.mark.parametrize("script", present_scripts())
def test_every_argument_has_a_docstring(script):
    """Every field of every argument dataclass has a docstring (tyro's --help); each group has a title."""
    tree = ast.parse((REPO / script).read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(getattr(d, "id", None) == "dataclass" for d in n.decorator_list)]
    groups = {c.name for c in classes}
    assert "Args" in groups, f"{script}: no Args dataclass"
    for cls in classes:
        assert ast.get_docstring(cls), f"{script}: {cls.name} has no docstring (its --help section title)"
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and getattr(node.annotation, "id", None) not in groups:
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) \
                    and isinstance(nxt.value.value, str), f"{script}: {cls.name}.{node.target.id} has no docstring"
