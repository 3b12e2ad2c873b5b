"""Verifiable reward for math answers: extract the final answer, decide if it equals the gold, score a batch.

Public API
----------
- ``extract_answer(text, mode="auto", multi_box=False)``: the final answer of a response, or None when
  it has no recognisable final answer (nothing outside the rules below is guessed). Modes
  (``ANSWER_MODES``):

  ``"boxed"``: content of the *last* ``\\boxed{...}`` / ``\\fbox{...}`` (brace matched; the space form
  ``\\boxed 5`` too; an unclosed last box, e.g. a truncated response, or an empty box gives None).
  ``"minerva"``: the few-shot format of Minerva-style evaluation (Lewkowycz et al., "Solving Quantitative
  Reasoning Problems with Language Models"): ``Final Answer: The final answer is X. I hope it is
  correct.`` gives X (math delimiters, a box around it and the period before the tail removed). The
  last "I hope it is correct" and the last "The final answer is" at most ``MINERVA_WINDOW`` characters
  before it; without the tail, no answer (``"the-answer-is"`` reads a bare "The final answer is X").
  ``"the-answer-is"``: a labelled answer at the end of a response: the last "the answer is X", "the
  final answer is X", "Answer: X" or its Markdown forms ("**Answer:** X", "**Final Answer**: X") that
  starts in the last ``ANSWER_WINDOW`` (300) characters. X is the delimited formula that follows
  (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``; the next line when the label ends its
  line) if only punctuation follows it in its sentence, else the rest of the sentence (up to a period
  followed by a space or the line end), so that "The answer is $5$ or $7$." reads "5 or 7", not a
  hedge that scores 5; a box in it gives its content.
  ``"answer"``: DAPO / verl ``math_dapo``: the last match of ``(?i)Answer\\s*:\\s*([^\\n]+)`` in the last
  300 characters, ``$`` stripped, and the content of a ``\\boxed{}`` inside it if there is one
  (kept exactly as DAPO's reward reads it: "**Answer:** 5" gives "** 5").
  ``"auto"``: the first of ``AUTO_ORDER`` that finds an answer:
  boxed -> minerva -> the-answer-is -> answer. Linear time in ``len(text)`` for every mode.

  ``multi_box=True`` (off by default, for training too): several boxes that together form one answer,
  e.g. ``\\boxed{1}`` and ``\\boxed{2}`` for a "find all" question, read as the comma list ``1, 2``
  (compared as a set). The boxes taken are the last one and those before it each at most
  ``MULTI_BOX_MAX_GAP`` (100) characters before the next; duplicates are dropped; a box inside a box is
  part of it. It cannot be used to hedge (a list of candidates never equals a single gold), but a
  response that boxes an intermediate result just before its final one is then read as a wrong list,
  which is why it is off by default. It applies wherever the box rule applies (``"boxed"``, ``"auto"``).
- ``is_equiv(pred, gold)``: are two answer strings equivalent (in-process; soft time limit when called on
  the main thread, see below).
- ``score(responses, golds, mode="auto", timeout_s=5.0, num_workers=None, reward_range="01",
  multi_box=False)``: grades a batch; returns ``Scores`` (a ``list[float]`` with ``.timeouts``,
  ``.crashes`` and ``.no_answer`` counts). ``"01"`` gives 1/0, ``"pm1"`` DAPO's +1/-1. A response with no
  recognisable final answer (extraction gives None; also a non-string response) gets the incorrect
  value and counts in ``.no_answer``, so format failures can be told apart from wrong answers.
- ``shutdown_workers()``: stop the worker pool (also registered with ``atexit``).

How an answer pair is judged
----------------------------
1. Fast path (in the calling process, no IPC): both strings are cleaned and canonicalised (see
   ``_canon``). Equal canonical strings -> correct. If both are *plain numbers* (integer, decimal,
   ``4.5e33``, ``4.5\\times10^{33}``; thousands separators and zero padding allowed) they are compared
   exactly as decimals: integers must match exactly, otherwise a relative tolerance of 1e-6 applies,
   and a difference decides *incorrect*. Exact rationals (integers, ``\\frac{p}{q}``, ``p/q``, mixed
   numbers) are compared exactly (``\\frac{333333}{1000000} != \\frac{1}{3}``); a decimal against a
   fraction is correct when the values are equal exactly, incorrect when they differ by more than
   ``VETO_REL_TOL`` (step 2 could not say otherwise), and left to step 2 in between (its rounding:
   ``0.333333 = \\frac{1}{3}``). Numerals with a base (``52_8``) equal the same digits in the same base
   or with no base written, nothing else. The fast path decides "incorrect" in no other case.
2. Otherwise math-verify: ``parse("\\boxed{<answer>}", [LatexExtractionConfig(boxed_match_priority=0)])``
   for gold and prediction, then ``verify(gold, pred)`` (gold first: verify is asymmetric). This gives
   symbolic equality (``2\\sqrt2 = \\sqrt8``, ``x^2+2x+1 = (x+1)^2``), ordered tuples, intervals with
   open/closed ends, unordered sets and comma lists, ``x = 3`` vs ``3``, mixed numbers, MC letters,
   units in ``\\text{}``, float rounding to 6 decimals. One correction: math-verify compares some numbers
   with an absolute tolerance (6-decimal rounding, ``evalf(chop=True)``), so ``1.6\\times10^{-19}`` would
   equal ``1.7\\times10^{-19}``; when it says "equal" and both sides are plain numeric expressions whose
   values differ by more than 1% relative, the answer is judged incorrect.
3. Answers that math-verify cannot judge in reasonable time are judged by the fast path only (so they
   are incorrect unless equal as canonical strings), as gold or as prediction: longer than
   ``MAX_ANSWER_CHARS``; nested deeper than ``MAX_NESTING`` brackets (its LaTeX parser needs seconds from
   a depth of about 12 on; real golds are nested at most 4 deep); or whose literals make a number of
   more than ``MAX_MAGNITUDE_DIGITS`` digits (``9^{9^{9}}``, ``10^{10^{10}}``, ``1000000!``: sympy
   computes integer powers and factorials exactly, in C, where no signal can stop it). These checks
   are string scans in the calling process; they spare the pool the items that would otherwise each
   take a worker for the whole time limit.

Equivalence rules (both directions; tested in ``tests/test_reward.py``): ``025 = 25``; ``1,000 = 1000``
and ``10,\\!080 = 10080`` (only the pattern ``\\d{1,3}(,\\d{3})+`` with no space after a comma: ``32, 349``
is the list of 32 and 349, ``(1,2)`` stays a tuple, ``1,3,5`` a list); ``5. = 5``;
``10\\text{ cm} = 10\\mathrm{~cm} = 10``; ``90^\\circ = 90^{\\circ} = 90° = 90``; ``\\$``, ``\\%``/``%``,
``\\left``/``\\right``, ``\\!``/``\\,`` are ignored; ``\\text{(B)} = \\textbf{(B)} = (B) = B``;
``2\\frac{1}{2} = 5/2 = \\frac{5}{2}``; ``\\dfrac = \\tfrac = \\frac``; ``\\frac12 = \\frac{1}{2}``;
``x=3 = 3``; ``k=\\frac12 = 0.5``; ``4.5e33 = 4.5\\times10^{33}``; ``(1,2) != (2,1)``;
``[1,2) != (1,2)``; ``\\{1,2\\} = \\{2,1\\}``; ``1,3,5 = 5,3,1``. Matrices and vectors compare entry by
entry in order; the row break ``\\\\`` survives normalisation (also when a space follows it, which the
spacing command ``\\ `` must not swallow). An inequality in one letter with constant bounds is read
as the interval it defines, with its ends: ``-2 \\le x \\le 7 = x \\in [-2,7] = [-2,7]``,
``-2 < x \\le 7 = (-2,7] != [-2,7]``, ``x > 3 = (3,\\infty)``, ``5 \\ge x = (-\\infty,5]``, ``x >= 3 = [3,\\infty)``
(ASCII ``<=``/``>=`` too); a negated letter turns the relation round: ``-x > -1 = x < 1``, ``-x \\ge -1 = x \\le 1``
(``-x > 1 != x < 1``); a relation written with its backslash doubled (``-2 \\\\le x \\\\le 7``, a JSON-escaping slip)
reads as the single one; ``x \\in S`` is ``S`` for an interval, union or set ``S``
(``x \\in (-\\infty,1) \\cup (2,3] = (-\\infty,1) \\cup (2,3]``); inequalities in the same letter joined by "or"
(``\\text{ or }``, ``\\lor``, ``\\cup``) are the union of their intervals
(``x < 1 \\text{ or } 2 < x \\le 3 = (-\\infty,1) \\cup (2,3]``).

Safety: model output is untrusted. Nothing here evaluates a raw string as Python: no ``eval``/``exec``,
no ``sympify``/``parse_expr`` on strings, no math-verify ``ExprExtractionConfig`` (which calls
``parse_expr``). Answers go through math-verify's LaTeX parser only; plain numbers and fractions are
read with ``decimal.Decimal`` / ``int`` after a strict regex match.

Why worker processes: math-verify's own time limit is ``signal.alarm`` based, so it only works on the
main thread of a process, and a pathological answer that passes the checks of step 3 (``(x+y+z)^{60}``
against ``1`` expands a polynomial for seconds) can take long. ``score`` therefore grades in a
persistent pool of worker processes (started lazily, reused across calls, restarted as needed, stopped
at exit). The limit of ``timeout_s`` per item counts the worker's *CPU time* (``TIME_LIMIT_CLOCK =
"cpu"``), so that a busy machine (a training job beside the grader) does not turn right answers into
timeouts: each worker arms ``SIGPROF`` (``ITIMER_PROF``) per item at ``SOFT_TIMEOUT_FRACTION *
timeout_s`` of its CPU time (cheap: the worker survives), and the parent enforces the hard limit: a
worker whose current item has used more than ``timeout_s`` of CPU (read from ``/proc``), or has not
answered within ``WALL_BACKSTOP_FACTOR * timeout_s`` of wall time, is killed (SIGKILL), the item
scores as incorrect and counts in ``Scores.timeouts``, a replacement is started and the rest of its
chunk goes to the other workers. ``TIME_LIMIT_CLOCK = "wall"`` (or no ``/proc``) counts wall time
instead (``SIGALRM``, kill after ``timeout_s``). A worker that dies (e.g. out of memory) costs its
current item (``Scores.crashes``). ``score`` returns in bounded time whatever the input (at most
``WALL_BACKSTOP_FACTOR * timeout_s`` per item that needs the parser).

Workers are plain ``subprocess`` children (``python -c`` loading this file by path), not
``multiprocessing``: nothing is forked from the caller (which has usually imported torch and started
threads), the caller's ``__main__`` is not re-imported (as ``spawn``/``forkserver`` would do), and the
global multiprocessing state of the caller (start method, forkserver preload) is left alone. Workers
import math-verify once at start; they talk JSON lines over stdin/stdout and exit when the parent does.
The pool belongs to the process that created it: a forked child or another rank (``accelerate launch``
with N processes) gets its own pool of ``num_workers`` workers on first use.

``num_workers=0`` grades in the calling process (for debugging): no hard limit then, only the soft
limit in wall time (``SIGALRM``: the caller's other threads would count in its CPU time), and only when
called from the main thread.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction
from functools import lru_cache

__all__ = [
    "ANSWER_MODES",
    "AUTO_ORDER",
    "Scores",
    "extract_answer",
    "is_equiv",
    "last_boxed",
    "score",
    "shutdown_workers",
]

MAX_ANSWER_CHARS = 1000  # longer extracted answers (or golds) are judged by the fast path only
MAX_NESTING = 8  # answers nested deeper in {} () [] are judged by the fast path only (golds: at most 4)
MAX_MAGNITUDE_DIGITS = 100_000  # ... and answers whose literals make a number with more digits (9^{9^{9}}, 10^6!)
SOFT_TIMEOUT_FRACTION: float | None = 0.8  # worker-side signal at this share of timeout_s; None: hard kill only
TIME_LIMIT_CLOCK = "cpu"  # workers: the per-item limit counts the worker's CPU time ("cpu") or wall time ("wall")
WALL_BACKSTOP_FACTOR = 4.0  # "cpu": a worker silent on one item for this many timeout_s of wall time is killed too
IS_EQUIV_TIMEOUT_S = 5.0  # soft limit of is_equiv() / num_workers=0 grading when no timeout_s is given
SOFT_TIMEOUT_REPEAT_S = 0.05  # the soft-limit signal repeats at this interval until the item ends (see _grade_soft)
WORKER_START_TIMEOUT_S = 120.0  # a worker that is not ready by then is killed and restarted
NUMERIC_REL_TOL = Decimal("1e-6")  # plain-number fast path
VETO_REL_TOL = 1e-2  # math-verify "equal" on numbers differing more than this (relative) is overruled


class Scores(list):
    """``list[float]`` of per-response rewards, plus ``timeouts`` (items that hit the time limit),
    ``crashes`` (items whose worker died) and ``no_answer`` (responses with no recognisable final answer
    under the extraction mode: format failures, scored incorrect, counted apart from wrong answers)."""

    def __init__(self, values=(), timeouts: int = 0, crashes: int = 0, no_answer: int = 0):
        super().__init__(values)
        self.timeouts = timeouts
        self.crashes = crashes
        self.no_answer = no_answer


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------

ANSWER_MODES = ("auto", "boxed", "minerva", "the-answer-is", "answer")  # accepted values of ``mode``
AUTO_ORDER = ("boxed", "minerva", "the-answer-is", "answer")  # what ``mode="auto"`` tries, first found wins
ANSWER_WINDOW = 300  # "the answer is" / "Answer:" must start in the last this many characters
MINERVA_WINDOW = 2000  # "The final answer is" must start at most this far before "I hope it is correct"
MULTI_BOX_MAX_GAP = 100  # multi_box: boxes at most this many characters apart form one answer

_BOX_CMDS = ("\\boxed", "\\fbox")
_ANSWER_RE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_SPACE_FORM_RE = re.compile(r"[^\s$]+")
# "The answer is", "the final answer is:", "Answer:", "**Answer:**", "**Final Answer**:", "__Answer:__"
_LABEL_RE = re.compile(
    r"(?i)(?<![A-Za-z])(?:the\s+)?(?:final\s+)?answer(?:\s*(?:\*\*|__))?(?:\s*:|\s+is\b(?:\s*:)?)(?:\s*(?:\*\*|__))?"
)
_MINERVA_HEAD_RE = re.compile(r"(?i)the\s+final\s+answer\s+is\b\s*:?")
_MINERVA_TAIL = "i hope it is correct"
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.S)  # an escape (skipped whole) or a brace


def _braces(text: str, start: int = 0):
    """(index, ``{`` or ``}``) of every brace from ``start`` on that is not escaped (``\\{``/``\\}``)."""
    for m in _BRACE_TOKEN_RE.finditer(text, start):
        if m.group() in "{}":
            yield m.start(), m.group()


def _match_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (escaped ``\\{``/``\\}`` skipped), or None."""
    depth = 0
    for i, c in _braces(text, open_idx):
        depth += 1 if c == "{" else -1
        if depth == 0:
            return i
    return None


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """The last match of ``pattern`` in ``text`` (None if none), in one pass."""
    found = deque(pattern.finditer(text), maxlen=1)
    return found[0] if found else None


def _box_at(text: str, i: int, close: int | None | bool = False) -> tuple[str | None, int]:
    """Content of the box whose command name ends at ``i`` and the index just after the box; content None
    if the box is unclosed or has no argument. ``close``: the index of the matching ``}`` if known."""
    n = len(text)
    j = i
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        if close is False:
            close = _match_brace(text, j)
        return (None, n) if close is None else (text[j + 1 : close].strip(), close + 1)
    if j > i:  # space form: "\boxed 5" -> up to the next whitespace or "$"
        m = _SPACE_FORM_RE.match(text, j)
        return (m.group(0), m.end()) if m else (None, j)
    return None, i


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace matched, so nested braces survive; the space
    form ``\\boxed 5`` too), stripped; None without a box, for an empty box or an unclosed last box (a truncated
    response). The one box reader: answers here, gold solutions in ``common.data``."""
    last = _last_match(_BOX_RE, text)
    return None if last is None else _box_at(text, last.end())[0] or None


def _brace_partners(text: str) -> dict[int, int]:
    """{index of ``{``: index of its ``}``} for every closed brace pair, in one pass (escapes skipped)."""
    partners, stack = {}, []
    for i, c in _braces(text):
        if c == "{":
            stack.append(i)
        elif stack:
            partners[stack.pop()] = i
    return partners


def _extract_multi_box(text: str) -> str | None:
    """The last box together with the boxes just before it (each at most ``MULTI_BOX_MAX_GAP`` characters
    before the next), as one comma-separated answer, duplicates dropped. Boxes inside a box are part of
    it. Linear time."""
    if _BOX_RE.search(text) is None:
        return None
    partners = _brace_partners(text)
    boxes: list[tuple[int, int, str | None]] = []  # (start, end, content) of the outermost boxes
    end_prev = -1
    for m in _BOX_RE.finditer(text):
        if m.start() < end_prev:
            continue  # inside the previous box
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        content, end = _box_at(text, m.end(), partners.get(j) if j < len(text) and text[j] == "{" else False)
        boxes.append((m.start(), end, content))
        end_prev = end
    if not boxes or boxes[-1][2] is None:
        return None  # like "boxed": an unclosed last box (a truncated response) is no answer
    run = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[2] is None or run[-1][0] - box[1] > MULTI_BOX_MAX_GAP:
            break
        run.append(box)
    parts: list[str] = []
    for _, _, content in reversed(run):
        if content and content not in parts:
            parts.append(content)
    return ", ".join(parts) or None


def _tidy(ans: str) -> str | None:
    """A labelled answer: the content of a box in it, else without ``**`` and math delimiters around it,
    without a final period. None if nothing is left."""
    ans = ans.strip()
    if _BOX_RE.search(ans):
        boxed = last_boxed(ans)
        if boxed:
            return boxed
    for _ in range(2):
        ans = re.sub(r"^(?:\*\*|__)|(?:\*\*|__)$", "", ans.strip()).strip()
        ans = re.sub(r"(?<!\.)\.$", "", ans).strip()
        for left, right in _DELIMS:
            inner = ans[len(left) : -len(right)]
            if (
                len(ans) > len(left) + len(right)
                and ans.startswith(left)
                and ans.endswith(right)
                and not inner.endswith("\\")  # "\\$" is a dollar sign, not a delimiter
                and _find_unescaped(inner, right, 0) < 0
            ):  # one formula, not "$5$ or $7$"
                ans = inner
                break
    ans = ans.strip()
    return ans or None


def _find_unescaped(text: str, token: str, start: int) -> int:
    """Index of the first ``token`` at or after ``start`` not preceded by a backslash, or -1."""
    i = text.find(token, start)
    while i > 0 and text[i - 1] == "\\":
        i = text.find(token, i + 1)
    return i


def _first_statement(rest: str) -> str | None:
    """What follows a label: a delimited formula (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``) if
    the text starts with one, else the first sentence of the line (the next non-empty line when the label
    ends its line)."""
    rest = re.sub(r"^[ \t]*(?:\*\*|__)?", "", rest)
    line, _, after = rest.partition("\n")
    if not line.strip():
        rest = after.lstrip()
    for left, right in _DELIMS:
        if rest.startswith(left):
            close = _find_unescaped(rest, right, len(left))
            if close > len(left):
                after = rest[close + len(right) :].partition("\n")[0]
                m = _SENTENCE_END_RE.search(after)
                if not re.sub(r"[\s.,;:!?*_)]", "", after[: m.start()] if m else after):
                    return _tidy(rest[len(left) : close])
                # more follows in the sentence ("$5$ or $7$"): the answer is the whole sentence, no hedge
            break
    line = rest.partition("\n")[0]
    if _BOX_RE.search(line):
        boxed = last_boxed(line)
        if boxed:
            return boxed
    m = _SENTENCE_END_RE.search(line)
    return _tidy(line[: m.start()] if m else line)


def _extract_answer_is(text: str) -> str | None:
    tail = text[-ANSWER_WINDOW:]
    last = _last_match(_LABEL_RE, tail)
    return None if last is None else _first_statement(tail[last.end() :])


def _extract_minerva(text: str) -> str | None:
    end = text.lower().rfind(_MINERVA_TAIL)
    if end < 0:
        return None
    window_start = max(0, end - MINERVA_WINDOW)
    window = text[window_start:end]
    last = _last_match(_MINERVA_HEAD_RE, window)
    if last is None:
        return None
    return _tidy(window[last.end() :])


def _extract_answer_line(text: str) -> str | None:
    matches = _ANSWER_RE.findall(text[-300:])
    if not matches:
        return None
    ans = matches[-1].strip()
    if any(cmd in ans for cmd in _BOX_CMDS):
        boxed = last_boxed(ans)
        if boxed is not None:
            ans = boxed
    ans = ans.strip().rstrip(".").strip().strip("$").strip()
    return ans or None


_EXTRACTORS = {
    "boxed": last_boxed,
    "minerva": _extract_minerva,
    "the-answer-is": _extract_answer_is,
    "answer": _extract_answer_line,
}


def _check_mode(mode: str) -> None:
    if mode not in ANSWER_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, ANSWER_MODES))}; got {mode!r}")


def extract_answer(text: str, mode: str = "auto", multi_box: bool = False) -> str | None:
    """Final answer of ``text`` by the rule ``mode`` (one of ``ANSWER_MODES``; see the module docstring),
    or None when there is no recognisable final answer. ``multi_box``: the boxes that end the response
    read as one answer (``\\boxed{1}`` and ``\\boxed{2}`` -> ``"1, 2"``) wherever the box rule applies."""
    _check_mode(mode)
    if not isinstance(text, str):
        return None
    for name in AUTO_ORDER if mode == "auto" else (mode,):
        if name == "boxed" and multi_box:
            found = _extract_multi_box(text)
        else:
            found = _EXTRACTORS[name](text)
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------------------------
# Normalisation and the fast path (pure string work, no parsing into math objects)
# ----------------------------------------------------------------------------------------------

_SCI_E_RE = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d{1,6})(?![\w.])")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![A-Za-z])")
# The row break "\\\\" is matched first and kept, so that "\\\\ " (a row break and a space) is never read as a
# row break's second backslash followed by the spacing command "\\ " (which broke every spaced matrix).
_ROW_BREAK = r"(\\\\)"
_SPACING_RE = re.compile(_ROW_BREAK + r"|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\displaystyle(?![A-Za-z])")
_LEFT_RIGHT_RE = re.compile(_ROW_BREAK + r"|\\(?:left|right)(?:\.|(?![A-Za-z]))|\\[bB]ig[glr]?(?![A-Za-z])")
_THIN_THOUSANDS_RE = re.compile(r"(?<=\d),(?:\s*\\!)+\s*(?=\d)")  # "10,\!080", "11,\! 111": LaTeX thousands
# inequalities in one variable with constant bounds -> intervals: "-2 \le x \le 7" -> "[-2, 7]"
# (ASCII "<=" / ">=" before "<" / ">": "x >= 3" is not "x > (= 3)")
_REL = (
    r"(<=|>=|<|\\lt(?![A-Za-z])|\\leq?(?:slant|q)?(?![A-Za-z])|≤|⩽|>|\\gt(?![A-Za-z])"
    r"|\\geq?(?:slant|q)?(?![A-Za-z])|≥|⩾)"
)
_REL_RE = re.compile(_REL)
_VAR = r"(-?\s*[A-Za-z])"  # the variable of an inequality, maybe negated: "-x > -1" is "x < 1"
_CHAIN_RE = re.compile(r"^(.+?)\s*" + _REL + r"\s*" + _VAR + r"\s*" + _REL + r"\s*(.+)$")
_ONE_SIDED_RE = re.compile(r"^(?:" + _VAR + r"\s*" + _REL + r"\s*(.+)|(.+?)\s*" + _REL + r"\s*" + _VAR + r")$")
# "\\le" written with the backslash doubled (a JSON-escaping slip) is "\le", not a row break and the letters "le"
_DOUBLED_REL_RE = re.compile(r"\\\\(?=(?:lt|gt|leq?(?:slant|q)?|geq?(?:slant|q)?)(?![A-Za-z]))")
_VAR_IN_RE = re.compile(r"^[A-Za-z]\s*\\in(?![A-Za-z])\s*(?=[\[(]|\\\{)")
# "or" between the inequalities of a union: "x < 1 \text{ or } 2 < x \le 3", "x<1 \lor x>2", "x < 1 or x > 2"
_OR_RE = re.compile(
    r"\s*(?:\\(?:text|mathrm|textrm|mbox)\s*\{\s*or\s*\}|\\(?:lor|vee|cup)(?![A-Za-z])|(?<![A-Za-z\\])or(?![A-Za-z]))\s*"
)
_TEXT_CMD = r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)"
_TEXT_UNWRAP_RE = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
# a trailing unit: "10\text{ cm}", "10 \mathrm{~cm}", "864 \mbox{ inches}^2" (not "3\mathrm{i}": one letter, no space)
_TRAILING_UNIT_RE = re.compile(
    r"^(.*?[\d}])\s*" + _TEXT_CMD + r"\s*\{(?:[\s~][^{}]*|[^{}\s~]{2,}[^{}]*)\}(?:\^\{?\d\}?)?$"
)
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\})")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d)")
_MC_RE = re.compile(r"^\(([A-Z])\)$|^([A-Z])\)$")
_VAR_EQ_RE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?=(?!=)")
_PLAIN_NUM_RE = re.compile(
    r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,6})|(?:\\times|\\cdot|\*)10\^\{?([+-]?\d{1,6})\}?)?"
)


def _unwrap_outer(s: str) -> str:
    """Strip math delimiters and a ``\\boxed{...}`` that covers the whole string."""
    for _ in range(3):
        s = s.strip()
        if s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
            continue
        for cmd in _BOX_CMDS:
            if s.startswith(cmd + "{") and _match_brace(s, len(cmd)) == len(s) - 1:
                s = s[len(cmd) + 1 : -1]
                break
        else:
            break
    return s.strip()


def _keep_row_break(m: re.Match) -> str:
    return m.group(1) or " "


def _keep_row_break_drop(m: re.Match) -> str:
    return m.group(1) or ""


_LESS = ("<", "<=", "\\lt", "\\le", "\\leq", "\\leqslant", "\\leqq", "≤", "⩽")
_STRICT = ("<", ">", "\\lt", "\\gt")


def _constant_bound(b: str) -> bool:
    """A bound without variables: no letters outside LaTeX command names (``\\infty``, ``\\frac``, ``\\pi``)."""
    b = b.strip()
    return (
        bool(b)
        and "," not in b
        and not _REL_RE.search(b)
        and "=" not in b
        and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", b))
    )


def _negated(bound: str) -> str:
    """``-bound`` written out: ``-1`` -> ``1``, ``\\pi`` -> ``-\\pi``, ``1+\\sqrt{2}`` -> ``-(1+\\sqrt{2})``."""
    bound = bound.strip()
    body = bound[1:].strip() if bound[:1] in "+-" else bound
    depth = 0
    for c in body:
        depth += (c in "{([") - (c in "})]")
        if depth == 0 and c in "+-":  # a sum: negate it whole
            return f"-({bound})"
    return body if bound.startswith("-") else "-" + body


def _one_interval(s: str) -> tuple[str, str] | None:
    """(variable, interval) of ``a < x \\le b`` / ``x \\ge a`` / ``b > x`` (one letter, maybe negated: ``-x > -1`` is
    ``x < 1``; constant bounds) or of ``x \\in S`` (an interval or set ``S``); None for anything else."""
    m = _VAR_IN_RE.match(s)
    if m:
        return s[0], s[m.end() :]
    m = _CHAIN_RE.match(s)
    if m:
        a, r1, var, r2, b = m.groups()
        if not (_constant_bound(a) and _constant_bound(b)) or (r1 in _LESS) != (r2 in _LESS):
            return None
        negated = var.startswith("-")
        if negated:  # "a < -x < b" is "-a > x > -b"
            a, b = _negated(a), _negated(b)
        if (r1 in _LESS) == negated:  # "b > x > a"
            a, r1, b, r2 = b, r2, a, r1
        return var[-1], ("(" if r1 in _STRICT else "[") + f"{a.strip()}, {b.strip()}" + (")" if r2 in _STRICT else "]")
    m = _ONE_SIDED_RE.match(s)
    if m:
        if m.group(1) is not None:  # "x < b", "x \ge a"
            var, rel, bound, upper = m.group(1), m.group(2), m.group(3), m.group(2) in _LESS
        else:  # "a < x", "b \ge x"
            var, rel, bound, upper = m.group(6), m.group(5), m.group(4), m.group(5) not in _LESS
        if not _constant_bound(bound):
            return None
        if var.startswith("-"):  # "-x < b" is "x > -b"
            bound, upper = _negated(bound), not upper
        if upper:
            return var[-1], f"(-\\infty, {bound.strip()}" + (")" if rel in _STRICT else "]")
        return var[-1], ("(" if rel in _STRICT else "[") + f"{bound.strip()}, \\infty)"
    return None


def _ineq_to_interval(s: str) -> str:
    """``a < x \\le b`` / ``x \\ge a`` / ``b > x`` (one letter, constant bounds; ``<=``/``>=`` too) as an
    interval with the same ends; ``x \\in S`` as ``S``; inequalities in the same letter joined by "or"
    (``x < 1 \\text{ or } 2 < x \\le 3``, ``\\lor``, ``\\cup``) as the union of their intervals. Anything
    else is returned unchanged."""
    if len(s) > MAX_ANSWER_CHARS:
        return s
    if _REL_RE.search(s):
        parts = _OR_RE.split(s)
        if len(parts) > 1:
            found = [_one_interval(part.strip()) for part in parts]
            if all(found) and len({var for var, _ in found}) == 1:
                return " \\cup ".join(interval for _, interval in found)
            return s
    elif not _VAR_IN_RE.match(s):
        return s
    found = _one_interval(s)
    return s if found is None else found[1]


@lru_cache(maxsize=8192)
def _clean(s: str) -> str:
    """Meaning-preserving cleanup applied to both sides before the fast path and before math-verify."""
    s = _unwrap_outer(s)
    s = _DOUBLED_REL_RE.sub(r"\\", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("{,}", ",")
    s = _THIN_THOUSANDS_RE.sub(",", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREE_RE.sub("", s)
    s = _SPACING_RE.sub(_keep_row_break, s)
    s = _LEFT_RIGHT_RE.sub(_keep_row_break_drop, s)
    s = s.replace("\n", " ").strip()
    s = re.sub(r"(?<!\.)\.$", "", s).strip()  # trailing period ("5." -> "5"), not an ellipsis
    if _THOUSANDS_RE.fullmatch(s):  # "1,000" (no space: "32, 349" is a list of two numbers)
        s = s.replace(",", "")
    return _ineq_to_interval(s)


@lru_cache(maxsize=8192)
def _canon(s: str) -> str:
    """Aggressive canonical form, used only to detect *equal* answers."""
    s = _clean(s)
    m = _TRAILING_UNIT_RE.match(s)
    if m and m.group(1).strip():
        s = m.group(1)
    for _ in range(3):
        s2 = _TEXT_UNWRAP_RE.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    if _THOUSANDS_RE.fullmatch(s.strip()):  # "1,000" left once a unit is gone; before spaces are dropped
        s = s.replace(",", "")
    s = _FRAC_SHORT_RE.sub(lambda m: "\\frac{%s}{%s}" % (m.group(1).strip("{}"), m.group(2).strip("{}")), s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = re.sub(r"\s+|~", "", s)
    if s.count("=") == 1 and "<" not in s and ">" not in s:
        m = _VAR_EQ_RE.match(s)
        if m and s[m.end() :]:
            s = s[m.end() :]
    m = _MC_RE.match(s)
    if m:
        s = m.group(1) or m.group(2)
    return s


def _plain_number(s: str) -> tuple[Decimal, bool] | None:
    """(value, is_integer_literal) if ``s`` is a plain number literal, else None."""
    m = _PLAIN_NUM_RE.fullmatch(s)
    if not m:
        return None
    sign, mant, exp1, exp2 = m.groups()
    exp = exp1 if exp1 is not None else exp2
    try:
        value = Decimal(sign + mant + (f"e{exp}" if exp is not None else ""))
    except InvalidOperation:
        return None
    return value, exp is None and "." not in mant


def _numbers_equal(a: tuple[Decimal, bool], b: tuple[Decimal, bool]) -> bool:
    (x, x_int), (y, y_int) = a, b
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 60, 10**7, -(10**7)
        if x == y:
            return True
        if x_int and y_int:
            return False
        return abs(x - y) <= NUMERIC_REL_TOL * max(abs(x), abs(y))


_FRAC_NUM_RE = re.compile(r"([+-]?)(\d{1,40})?\\frac\{([+-]?\d{1,40})\}\{([+-]?\d{1,40})\}")
_SLASH_NUM_RE = re.compile(r"([+-]?)(\d{1,40})/(\d{1,40})")
_BASE_NUMERAL_RE = re.compile(r"(\d[0-9A-Za-z]*)_\{?(\d{1,2})\}?")


def _rational(s: str) -> tuple[Fraction | Decimal, bool] | None:
    """(value, exact) of a canonical number: a plain literal (exact if an integer), ``\\frac{p}{q}``, ``p/q``
    or a mixed number ``2\\frac{1}{2}`` (exact). None for anything else (or a zero denominator)."""
    plain = _plain_number(s)
    if plain is not None:
        return plain
    m = _FRAC_NUM_RE.fullmatch(s)
    if m:
        sign, whole, num, den = m.groups()
        if whole is not None and (num[0] in "+-" or den[0] in "+-"):
            return None
        num, den = int(num), int(den)
        if den == 0:
            return None
        value = Fraction(num, den) + int(whole or 0)
        return (-value if sign == "-" else value), True
    m = _SLASH_NUM_RE.fullmatch(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) == "-" else value), True
    return None


def _rationals_equal(a: tuple[Fraction | Decimal, bool], b: tuple[Fraction | Decimal, bool]) -> bool | None:
    """Exact numbers: equal iff equal values. A decimal against a fraction: True when the values are equal
    exactly, False when they differ by more than ``VETO_REL_TOL`` (relative; the slow path could not say
    otherwise), else None (math-verify decides, with its rounding: ``0.333333 = \\frac{1}{3}``)."""
    (x, x_exact), (y, y_exact) = a, b
    if x_exact and y_exact:
        return Fraction(x) == Fraction(y)
    if all(not isinstance(v, Decimal) or abs(v.adjusted()) <= 100 for v in (x, y)) and Fraction(x) == Fraction(y):
        return True  # 0.5 and \frac{1}{2}: the same value exactly
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 60, 10**7, -(10**7)
        dx = x if isinstance(x, Decimal) else Decimal(x.numerator) / Decimal(x.denominator)
        dy = y if isinstance(y, Decimal) else Decimal(y.numerator) / Decimal(y.denominator)
        if abs(dx - dy) > Decimal(str(VETO_REL_TOL)) * max(abs(dx), abs(dy)):
            return False
    return None


def _base_numerals(p: str, g: str) -> bool | None:
    """``52_8`` (a numeral with its base): equal to the same digits in the same base or with no base written,
    and to nothing else (a different base is a different number). None when neither side has a base."""
    mp, mg = _BASE_NUMERAL_RE.fullmatch(p), _BASE_NUMERAL_RE.fullmatch(g)
    if mp is None and mg is None:
        return None
    digits_p, base_p = (mp.group(1), int(mp.group(2))) if mp else (p, None)
    digits_g, base_g = (mg.group(1), int(mg.group(2))) if mg else (g, None)
    if base_p is not None and base_g is not None and base_p != base_g:
        return False
    return digits_p.upper() == digits_g.upper()


@lru_cache(maxsize=8192)
def _too_complex(s: str) -> bool:
    """True for an answer the parser must not see: longer than ``MAX_ANSWER_CHARS``, nested deeper than
    ``MAX_NESTING`` brackets (math-verify's LaTeX parser takes seconds from depth ~12 on), or whose
    literals make a number with more than ``MAX_MAGNITUDE_DIGITS`` digits (sympy evaluates integer
    powers and factorials exactly: ``9^{9^{9}}`` has 370 million digits)."""
    if len(s) > MAX_ANSWER_CHARS:
        return True
    s = _clean(s)
    depth = deepest = 0
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "})]":
            depth -= 1
        i += 1
    if deepest > MAX_NESTING:
        return True
    return _magnitude(s, 0, "")[0] > MAX_MAGNITUDE_DIGITS


_MAG_NUM_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_CLOSERS = {"{": "}", "(": ")", "[": "]"}


def _magnitude(s: str, i: int, stop: str) -> tuple[float, int]:
    """Upper estimate of log10 of the largest absolute value that the literals of ``s[i:]`` can form (up to
    ``stop`` or the end): literals multiply (a bound for sums and products of literals), ``a^b`` gives
    log10(a) * 10^(estimate of b), ``n!`` gives n log10 n; letters and commands count as 1. Returns
    (estimate, index after ``stop``). Recursion depth is bounded by the nesting check."""
    total, n = 0.0, len(s)
    while i < n:
        c = s[i]
        if c == stop:
            return total, i + 1
        if c in "})]":  # an unmatched closer
            i += 1
            continue
        m = _MAG_NUM_RE.match(s, i)
        if m:
            lit = m.group()
            intpart = lit.split(".")[0].lstrip("0")
            atom = len(intpart) - 1 + math.log10(float("0." + intpart[:15]) * 10) if intpart else 0.0
            i = m.end()
        elif c in _CLOSERS:
            atom, i = _magnitude(s, i + 1, _CLOSERS[c])
        elif c == "\\":
            m = re.compile(r"\\(?:[A-Za-z]+|.)").match(s, i)
            atom, i = 0.0, (m.end() if m else i + 1)
        else:
            atom, i = 0.0, i + 1
        while i < n and s[i] in " ^!":
            if s[i] == " ":
                i += 1
            elif s[i] == "!":
                atom = math.inf if atom > 8 else 10**atom * max(atom, 0.0)
                i += 1
            else:  # exponent: one character or a group
                i += 1
                while i < n and s[i] == " ":
                    i += 1
                if i < n and s[i] in _CLOSERS:
                    e, i = _magnitude(s, i + 1, _CLOSERS[s[i]])
                elif i < n:
                    m = _MAG_NUM_RE.match(s, i)
                    e = math.log10(int(s[i])) if m and s[i].isdigit() and s[i] != "0" else 0.0
                    i += 1
                else:
                    e = 0.0
                atom = math.inf if e > 15 else max(atom, 0.0) * 10**e
        total += max(atom, 0.0)
        if total == math.inf:
            return total, n
    return total, n


def _fast_equiv(pred: str, gold: str) -> bool | None:
    """True / False when decided by string work alone, None when math-verify must decide."""
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        if pred.strip() == gold.strip():
            return True
        return None
    p, g = _canon(pred), _canon(gold)
    if not p or not g:  # an empty answer is never correct
        return False
    if p == g:
        return True
    np_, ng = _plain_number(p), _plain_number(g)
    if np_ is not None and ng is not None:
        return _numbers_equal(np_, ng)
    based = _base_numerals(p, g)
    if based is not None:
        return based
    rp, rg = _rational(p), _rational(g)
    if rp is not None and rg is not None:
        return _rationals_equal(rp, rg)
    return None


def _slow_path_allowed(pred: str, gold: str) -> bool:
    """May this pair go to math-verify? Not when either side is too long, too deep or too large."""
    return not _too_complex(pred) and not _too_complex(gold)


# ----------------------------------------------------------------------------------------------
# math-verify (slow path); runs in worker processes (or in-process for is_equiv / num_workers=0)
# ----------------------------------------------------------------------------------------------

_MV = None  # (parse, verify, config, TimeoutException, sympy.Expr)


def _mv():
    global _MV
    if _MV is None:
        import logging

        import sympy
        from math_verify import LatexExtractionConfig, parse, verify
        from math_verify import grader as _grader
        from math_verify import parser as _parser
        from math_verify.errors import TimeoutException

        # we pass timeouts=None (our own limits apply); silence math-verify's one-time warning about it
        _parser.TIMEOUT_WARNING_SHOWN = True
        _grader.TIMEOUT_WARNING_SHOWN = True
        for name in ("math_verify", "latex2sympy2_extended"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _MV = (parse, verify, [LatexExtractionConfig(boxed_match_priority=0)], TimeoutException, sympy.Expr)
    return _MV


def _mv_input(s: str) -> str:
    """LaTeX for math-verify: cleaned, ``4.5e33`` rewritten as ``4.5\\times10^{33}`` (else e = Euler)."""
    s = _SCI_E_RE.sub(lambda m: f"{m.group(1)}\\times10^{{{int(m.group(2))}}}", _clean(s))
    return "\\boxed{" + s + "}"


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    parse, _, cfg, _, _ = _mv()
    return parse(_mv_input(gold), extraction_config=cfg, parsing_timeout=None)


def _numeric_veto(gold_parsed, pred_parsed) -> bool:
    """True if both sides are plain numeric expressions whose values differ by > VETO_REL_TOL."""
    expr = _mv()[4]
    g = next((x for x in gold_parsed if isinstance(x, expr)), None)
    p = next((x for x in pred_parsed if isinstance(x, expr)), None)
    if g is None or p is None or not g.is_number or not p.is_number:
        return False
    try:
        gv, pv = complex(g.evalf(30)), complex(p.evalf(30))
    except Exception:
        return False
    scale = max(abs(gv), abs(pv))
    if not math.isfinite(scale) or scale == 0:
        return False
    return abs(gv - pv) > VETO_REL_TOL * scale


def _mv_equiv(pred: str, gold: str) -> bool:
    """math-verify equivalence. Exceptions (and math-verify's TimeoutException) give False; our own
    soft-limit exception (_SoftTimeout) is deliberately *not* caught here."""
    parse, verify, cfg, mv_timeout, _ = _mv()
    try:
        gold_parsed = _parse_gold(gold)
        pred_parsed = parse(_mv_input(pred), extraction_config=cfg, parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        if not verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return False
        return not _numeric_veto(gold_parsed, pred_parsed)
    except (Exception, mv_timeout):
        return False


class _SoftTimeout(BaseException):
    """Raised by our SIGALRM handler; a BaseException so that math-verify/sympy don't swallow it."""


def _raise_soft_timeout(signum, frame):
    raise _SoftTimeout()


def _disarm(timer: int) -> None:
    """Stop the repeating soft-limit timer; a firing that lands in here is absorbed and the timer stopped again."""
    while True:
        try:
            signal.setitimer(timer, 0)
            return
        except _SoftTimeout:
            continue


def _grade_soft(pred: str, gold: str, soft_s: float | None, clock: str = "wall") -> tuple[bool, bool]:
    """(correct, timed_out) with a signal-based limit of ``soft_s`` seconds (main thread only; None: no
    limit): wall time (``SIGALRM``) or, with ``clock="cpu"``, this process's CPU time (``SIGPROF``; for the
    single-threaded workers only: in a caller with busy threads it would count their time too)."""
    use_alarm = bool(soft_s) and threading.current_thread() is threading.main_thread()
    sig, timer = (signal.SIGPROF, signal.ITIMER_PROF) if clock == "cpu" else (signal.SIGALRM, signal.ITIMER_REAL)
    armed, old_handler = False, None
    try:
        if use_alarm:
            old_handler = signal.signal(sig, _raise_soft_timeout)
            armed = True
            # Repeats every SOFT_TIMEOUT_REPEAT_S until disarmed: a handler that fires inside a weakref or GC
            # callback has its exception printed and dropped by the interpreter, and the next firing still stops it.
            signal.setitimer(timer, max(soft_s, 0.01), SOFT_TIMEOUT_REPEAT_S)
        try:
            return _mv_equiv(pred, gold), False
        finally:
            if armed:
                _disarm(timer)
    except _SoftTimeout:
        return False, True
    finally:
        if armed:
            _disarm(timer)  # again: a firing may have cut the inner disarm short
            signal.signal(sig, old_handler if old_handler is not None else signal.SIG_DFL)


def _gold_str(gold) -> str:
    if isinstance(gold, float) and gold.is_integer():
        return str(int(gold))
    return gold if isinstance(gold, str) else str(gold)


def is_equiv(pred: str, gold: str) -> bool:
    """Is the answer ``pred`` equivalent to the gold answer ``gold``? Never raises (errors -> False).
    Runs in the calling process: fast path, then math-verify under a ``SIGALRM`` limit of
    ``IS_EQUIV_TIMEOUT_S`` when called from the main thread (no limit from other threads)."""
    try:
        if pred is None or gold is None:
            return False
        pred, gold = str(pred), _gold_str(gold)
        fast = _fast_equiv(pred, gold)
        if fast is not None:
            return fast
        if not _slow_path_allowed(pred, gold):
            return False
        return _grade_soft(pred, gold, IS_EQUIV_TIMEOUT_S)[0]
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return False


# ----------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------

_WORKER_BOOT = (
    "# common/reward.py grading worker\n"
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; a worker ends with it\n"
    "if sys.path and sys.path[0] in ('', '.'): sys.path.pop(0)\n"
    "import importlib.util as u\n"
    "s = u.spec_from_file_location('_rlvr_reward_worker', sys.argv[1])\n"
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
    "m._worker_main()\n"
)


def _worker_main() -> None:
    """Worker loop: read JSON-line tasks on stdin, write one JSON line per graded item."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    parent = os.getppid()

    def watchdog():  # exit if the parent goes away (stdin EOF covers the idle case)
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()

    def send(obj) -> None:
        out.write((json.dumps(obj) + "\n").encode())

    _mv()
    _grade_soft("\\frac{1}{2}", "0.5", None)  # warm up the parser
    # "c": this process's CPU time when idle again, from which the parent counts the next item's CPU time
    send({"ready": os.getpid(), "c": time.process_time()})
    for line in sys.stdin.buffer:
        msg = json.loads(line)
        if msg.get("op") == "exit":
            break
        soft, clock = msg.get("soft"), msg.get("clock", "wall")
        for idx, pred, gold in msg["items"]:
            try:
                ok, timed_out = _grade_soft(pred, gold, soft, clock)
            except _SoftTimeout:  # the alarm fired in a cleanup block
                ok, timed_out = False, True
            except Exception:
                ok, timed_out = False, False
            send({"i": idx, "ok": bool(ok), "to": bool(timed_out), "c": time.process_time()})


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") and "SC_CLK_TCK" in os.sysconf_names else 100


def _proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` from ``/proc`` (Linux), or None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.items: deque = deque()  # items of the current chunk not yet answered
        self.item_start = 0.0  # wall time (monotonic) when the current item started
        self.cpu_mark: float | None = None  # the worker's CPU time when it last finished an item (or started)
        self.next_check = 0.0  # when to look at the current item's time again

    @property
    def fd(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, obj) -> bool:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def read(self) -> tuple[list, bool]:
        """Complete messages available now, and whether the pipe hit EOF."""
        eof = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not data:
                eof = True
                break
            self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        msgs = []
        for line in lines:
            try:
                msgs.append(json.loads(line))
            except ValueError:
                pass
        return msgs, eof

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    """Worker processes owned by one parent process; used under ``_POOL_LOCK``."""

    def __init__(self):
        self.pid = os.getpid()
        self.workers: list[_Worker] = []
        self.item_cpu: list[tuple[bool, float]] = []  # (correct, worker CPU seconds) of the last grade()'s items

    def ensure(self, n: int) -> list[_Worker]:
        alive = []
        for w in self.workers:
            if w.proc.poll() is None:
                alive.append(w)
            else:
                w.kill()  # reap and close its pipes
        self.workers = alive
        while len(self.workers) < n:
            self.workers.append(_Worker())
        return self.workers[:n]

    def replace(self, old: _Worker) -> _Worker:
        old.kill()
        new = _Worker()
        self.workers[self.workers.index(old)] = new
        return new

    def wait_ready(self, n: int, timeout: float = WORKER_START_TIMEOUT_S) -> None:
        """Block until ``n`` workers are ready (the benchmark uses it to time start-up separately)."""
        workers = self.ensure(n)
        deadline = time.monotonic() + timeout
        while not all(w.ready for w in workers):
            for w in workers:
                if not w.ready:
                    msgs, eof = w.read()
                    for m in msgs:
                        if "ready" in m:
                            w.ready, w.cpu_mark = True, m.get("c")
                    if not w.ready and eof:
                        raise RuntimeError("reward worker died during start-up (see its stderr above)")
            if time.monotonic() > deadline:
                raise RuntimeError("reward workers did not start in time")
            time.sleep(0.01)

    def grade(self, items: list[tuple[int, str, str]], n: int, timeout_s: float) -> dict[int, tuple[bool, str]]:
        """Grade ``(key, pred, gold)`` items on ``n`` workers: {key: (correct, "" | "timeout" | "crash")}."""
        results: dict[int, tuple[bool, str]] = {}
        self.item_cpu = []
        start_failures = 0
        soft = SOFT_TIMEOUT_FRACTION * timeout_s if SOFT_TIMEOUT_FRACTION else None
        clock = TIME_LIMIT_CLOCK
        backstop = WALL_BACKSTOP_FACTOR * timeout_s

        def check(w: _Worker, now: float) -> float | None:
            """None if the current item of ``w`` is over its limit, else the time of the next check."""
            elapsed = now - w.item_start
            if clock != "cpu" or w.cpu_mark is None:
                return None if elapsed > timeout_s else w.item_start + timeout_s
            if elapsed <= timeout_s:  # CPU time cannot run ahead of wall time (single-threaded worker)
                return w.item_start + timeout_s
            cpu = _proc_cpu_seconds(w.proc.pid)
            if cpu is None:  # no /proc: wall time
                return None
            used = cpu - w.cpu_mark
            if used > timeout_s or elapsed > backstop:
                return None
            return now + max(min(timeout_s - used, backstop - elapsed), 0.01)

        chunk = max(1, min(8, math.ceil(len(items) / (4 * n))))
        queue = deque(items[i : i + chunk] for i in range(0, len(items), chunk))
        workers = self.ensure(n)
        sel = selectors.DefaultSelector()

        def swap(w: _Worker) -> None:  # kill w, requeue its unanswered items, start a replacement
            sel.unregister(w.fd)
            if w.items:
                queue.appendleft(list(w.items))
                w.items.clear()
            new = self.replace(w)
            workers[workers.index(w)] = new
            sel.register(new.fd, selectors.EVENT_READ, new)

        def start_failed() -> None:
            nonlocal start_failures
            start_failures += 1
            if start_failures >= 3 * n:
                raise RuntimeError("reward workers keep failing to start (see their stderr above)")

        try:
            for w in workers:
                sel.register(w.fd, selectors.EVENT_READ, w)
            while len(results) < len(items):
                now = time.monotonic()
                for w in list(workers):  # dispatch a chunk to every idle ready worker
                    if w.ready and not w.items and queue:
                        batch = queue.popleft()
                        w.items.extend(batch)
                        w.item_start, w.next_check = now, now + timeout_s
                        if not w.send({"soft": soft, "clock": clock, "items": batch}):
                            swap(w)
                deadlines = [w.next_check for w in workers if w.items]
                deadlines += [w.started + WORKER_START_TIMEOUT_S for w in workers if not w.ready]
                wait = min(deadlines, default=now + 1.0) - time.monotonic()
                for key, _ in sel.select(timeout=min(max(wait, 0.0), 1.0) + 0.001):
                    w = key.data
                    msgs, eof = w.read()
                    t = time.monotonic()
                    for m in msgs:
                        if "ready" in m:
                            w.ready, w.cpu_mark = True, m.get("c")
                            start_failures = 0
                        elif "i" in m and w.items and w.items[0][0] == m["i"]:
                            w.items.popleft()
                            results[m["i"]] = (bool(m["ok"]), "timeout" if m.get("to") else "")
                            if w.cpu_mark is not None and m.get("c") is not None:
                                self.item_cpu.append((bool(m["ok"]), m["c"] - w.cpu_mark))
                            w.item_start, w.cpu_mark, w.next_check = t, m.get("c"), t + timeout_s
                    if eof:
                        if w.items:  # died while grading (e.g. out of memory): its current item is lost
                            results[w.items.popleft()[0]] = (False, "crash")
                        elif not w.ready:
                            start_failed()
                        swap(w)
                now = time.monotonic()
                for w in list(workers):  # the hard limits
                    if w.items and now >= w.next_check:
                        nxt = check(w, now)
                        if nxt is not None:
                            w.next_check = nxt
                            continue
                        results[w.items.popleft()[0]] = (False, "timeout")
                        swap(w)
                    elif not w.ready and now - w.started > WORKER_START_TIMEOUT_S:
                        start_failed()
                        swap(w)
        finally:
            sel.close()
        return results

    def close(self) -> None:
        for w in self.workers:
            w.send({"op": "exit"})
        deadline = time.monotonic() + 1.0
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self.workers = []


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _get_pool() -> _Pool:
    global _POOL
    if _POOL is None or _POOL.pid != os.getpid():  # a forked child never touches its parent's workers
        _POOL = _Pool()
    return _POOL


def shutdown_workers() -> None:
    """Stop the worker processes of this process's pool (a later ``score`` starts new ones)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.close()
        _POOL = None


atexit.register(shutdown_workers)


# ----------------------------------------------------------------------------------------------
# Batch scoring
# ----------------------------------------------------------------------------------------------


def score(
    responses: list[str],
    golds: list[str],
    mode: str = "auto",
    timeout_s: float = 5.0,
    num_workers: int | None = None,
    reward_range: str = "01",
    multi_box: bool = False,
) -> Scores:
    """Reward of each response against its gold: 1.0 if its extracted answer is equivalent, else 0.0
    (``reward_range="pm1"``: +1 / -1, as DAPO). Each item that needs math-verify gets at most
    ``timeout_s`` seconds of a worker (default ``num_workers = min(2, os.cpu_count())``); an item over the
    limit scores incorrect and counts in ``.timeouts``. ``num_workers=0`` grades in-process (debugging;
    only the soft SIGALRM limit, main thread only)."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    if reward_range not in ("01", "pm1"):
        raise ValueError(f"reward_range must be '01' or 'pm1', got {reward_range!r}")
    _check_mode(mode)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    right, wrong = 1.0, (0.0 if reward_range == "01" else -1.0)

    correct = [False] * len(responses)
    no_answer = 0
    pending: dict[tuple[str, str], list[int]] = {}  # identical (pred, gold) pairs are graded once
    for i, (response, gold) in enumerate(zip(responses, golds)):
        pred = extract_answer(response, mode, multi_box=multi_box)
        if pred is None:
            no_answer += 1
            continue
        if gold is None:
            continue
        gold = _gold_str(gold)
        try:
            fast = _fast_equiv(pred, gold)
        except Exception:
            fast = None
        if fast is not None:
            correct[i] = fast
        elif _slow_path_allowed(pred, gold):
            pending.setdefault((pred, gold), []).append(i)

    timeouts = crashes = 0
    if pending:
        keys = list(pending)
        if num_workers <= 0:
            soft = SOFT_TIMEOUT_FRACTION * timeout_s if SOFT_TIMEOUT_FRACTION else timeout_s
            verdicts = {}
            for k, (pred, gold) in enumerate(keys):
                try:
                    ok, timed_out = _grade_soft(pred, gold, soft)
                except _SoftTimeout:  # the alarm fired in a cleanup block
                    ok, timed_out = False, True
                verdicts[k] = (ok, "timeout" if timed_out else "")
        else:
            with _POOL_LOCK:
                verdicts = _get_pool().grade(
                    [(k, pred, gold) for k, (pred, gold) in enumerate(keys)], num_workers, timeout_s
                )
        for k, key in enumerate(keys):
            ok, status = verdicts.get(k, (False, ""))
            timeouts += len(pending[key]) * (status == "timeout")
            crashes += len(pending[key]) * (status == "crash")
            for i in pending[key]:
                correct[i] = ok
    return Scores([right if c else wrong for c in correct], timeouts=timeouts, crashes=crashes, no_answer=no_answer)
