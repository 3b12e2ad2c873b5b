"""Copy the `# ─── SHARED: … ───` sections of grpo.py into forks, leaving their ALGORITHM sections untouched.

    python tools/sync_shared_sections.py opefo.py steer.py     # rewrite these files in place
    python tools/sync_shared_sections.py --check opefo.py      # exit 1 if any SHARED section differs

tests/test_shared_sections.py fails when a fork's SHARED sections drift from grpo.py; this fixes that.
"""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANNER = re.compile(r"^# ─── (SHARED|ALGORITHM): (.+?) ─+$", re.M)


def split_sections(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(text before the first banner, [(kind, name, banner line + body)])."""
    marks = list(BANNER.finditer(text))
    head = text[: marks[0].start()] if marks else text
    return head, [
        (m.group(1), m.group(2), text[m.start() : marks[i + 1].start() if i + 1 < len(marks) else len(text)])
        for i, m in enumerate(marks)
    ]


def synced(fork_text: str, reference_text: str) -> str:
    reference = {name: body for kind, name, body in split_sections(reference_text)[1] if kind == "SHARED"}
    head, sections = split_sections(fork_text)
    missing = [name for kind, name, _ in sections if kind == "SHARED" and name not in reference]
    if missing:
        raise SystemExit(f"SHARED sections not in grpo.py: {missing}")
    return head + "".join(reference[name] if kind == "SHARED" else body for kind, name, body in sections)


if __name__ == "__main__":
    check = "--check" in sys.argv
    reference_text = (REPO / "grpo.py").read_text()
    stale = []
    for name in (a for a in sys.argv[1:] if a != "--check"):
        path = Path(name)
        text = path.read_text()
        new = synced(text, reference_text)
        if new != text:
            stale.append(name)
            if not check:
                path.write_text(new)
    print(("out of sync: " if check else "updated: ") + (", ".join(stale) or "none"))
    sys.exit(1 if check and stale else 0)
