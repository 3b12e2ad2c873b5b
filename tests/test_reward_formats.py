"""Tests for common/reward.py: the extraction modes of real model outputs (Minerva's few-shot format,
"The answer is X", "**Answer:** X", several boxes), the ``no_answer`` count, MATH-500's matrix and
interval golds, and untrusted inputs that must neither hang nor crash the worker pool.

    pytest tests/test_reward_formats.py -q
"""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import data_dir, needs_data

from common import reward
from common.reward import ANSWER_MODES, AUTO_ORDER, extract_answer, score

MINERVA = "Final Answer: The final answer is {}. I hope it is correct."


def test_modes_and_auto_order_are_documented():
    assert ANSWER_MODES == ("auto", "boxed", "minerva", "the-answer-is", "answer")
    assert AUTO_ORDER == ("boxed", "minerva", "the-answer-is", "answer")
    doc = reward.__doc__
    assert "boxed -> minerva -> the-answer-is -> answer" in doc
    for mode in ANSWER_MODES:
        assert f'``"{mode}"``' in doc
    with pytest.raises(ValueError):
        extract_answer("\\boxed{1}", "last-number")
    with pytest.raises(ValueError):
        score(["\\boxed{1}"], ["1"], mode="minerva-style")


# ----------------------------------------------------------------------------------------------
# Extraction: each mode, both ways (what it takes and what it leaves alone)
# ----------------------------------------------------------------------------------------------

EXTRACT = [
    # Minerva few-shot format: X, not the sentence
    (MINERVA.format("$\\frac{1}{2}$"), "minerva", "\\frac{1}{2}"),
    (MINERVA.format("3.5"), "minerva", "3.5"),
    (MINERVA.format("$(1,2)$"), "minerva", "(1,2)"),
    ("We get x=5.\n" + MINERVA.format("$5$") + "\n\nProblem:\nNext one", "minerva", "5"),
    (MINERVA.format("$\\boxed{7}$"), "minerva", "7"),
    ("final answer: the final answer is 12. i hope it is correct.", "minerva", "12"),
    ("Final Answer: The final answer is 7", "minerva", None),  # the format's tail is missing
    ("I hope it is correct.", "minerva", None),
    ("The answer is 5.", "minerva", None),
    # the DAPO Answer line would return the sentence
    (MINERVA.format("$\\frac{1}{2}$"), "answer", "The final answer is $\\frac{1}{2}$. I hope it is correct"),
    # "The answer is X" / "**Answer:** X" at the end of a response
    ("So 8 + 64 = 72. The answer is 72.", "the-answer-is", "72"),
    ("Therefore, the final answer is $\\frac{3}{4}$.", "the-answer-is", "\\frac{3}{4}"),
    ("Therefore, the final answer is $\\frac{3}{4}$, as required.", "the-answer-is", "$\\frac{3}{4}$, as required"),
    ("The answer is: 12", "the-answer-is", "12"),
    ("The answer is 3.5.", "the-answer-is", "3.5"),
    ("**Answer:** 42", "the-answer-is", "42"),
    ("**Answer**: $x = 3$", "the-answer-is", "x = 3"),
    ("**Final Answer:** \\(\\sqrt{2}\\)", "the-answer-is", "\\sqrt{2}"),
    ("**The answer is 12**.", "the-answer-is", "12"),
    ("**Answer:**\n\n$$\\frac{1}{2}$$", "the-answer-is", "\\frac{1}{2}"),
    ("Answer: 4", "the-answer-is", "4"),
    ("The answer is \\boxed{9}.", "the-answer-is", "9"),
    ("The answer is $\\$18.90$.", "the-answer-is", "\\$18.90"),  # an escaped dollar is no delimiter
    ("**Answer:** $\\$18.90$", "the-answer-is", "\\$18.90"),
    ("The answer is 5\\$.", "the-answer-is", "5\\$"),
    (MINERVA.format("$\\$5$"), "minerva", "\\$5"),
    ("I said the answer is 4. Checking again, the answer is 5.", "the-answer-is", "5"),
    ("The answer is 5. Let me double-check: 2 + 3 = 5.", "the-answer-is", "5"),
    (
        "I think the answer is 5, let me check.\n" + "We verify each case. " * 20,
        "the-answer-is",
        None,
    ),  # not at the end
    ("The answers vary.", "the-answer-is", None),
    ("no label at all: 5", "the-answer-is", None),
    ("The answer is", "the-answer-is", None),
    ("**Answer:** 42", "answer", "** 42"),  # DAPO's rule, unchanged: why "the-answer-is" exists
    # a formula followed by more text in its sentence is not the answer alone (no hedging)
    ("The answer is $5$ or $7$.", "the-answer-is", "$5$ or $7$"),
    ("The answer is $5$, $7$", "the-answer-is", "$5$, $7$"),
    ("The answer is $5$, since $2 + 3 = 5$.", "the-answer-is", "$5$, since $2 + 3 = 5$"),
    ("The answer is $5$ (or seven)", "the-answer-is", "$5$ (or seven)"),
    ("The answer is $5$**.", "the-answer-is", "5"),
    ("The answer is $5$. Or maybe 7.", "the-answer-is", "5"),  # the statement ends at its sentence, as a box
    # auto: boxed -> minerva -> the-answer-is -> answer
    ("The answer is 4, i.e. \\boxed{5}", "auto", "5"),
    (MINERVA.format("$6$"), "auto", "6"),
    ("Final Answer: The final answer is 7", "auto", "7"),
    ("So the answer is 8.", "auto", "8"),
    ("**Answer:** 9", "auto", "9"),
    ("Answer : 10", "auto", "10"),
    ("The result: 11", "auto", None),  # nothing outside these rules is guessed
    ("We compute 5 + 6 = 11.", "auto", None),
    ("\\boxed{}", "auto", None),  # an empty box is no answer
    ("\\boxed{3} and a truncated \\boxed{12", "auto", None),
]


@pytest.mark.parametrize("text, mode, expected", EXTRACT)
def test_extract_modes(text, mode, expected):
    assert extract_answer(text, mode) == expected


MULTI = [
    ("The solutions are $\\boxed{1}$ and $\\boxed{2}$.", "1, 2"),
    ("$$x = \\boxed{-3}$$\nor\n$$x = \\boxed{\\frac{1}{2}}$$", "-3, \\frac{1}{2}"),
    ("\\boxed{5}, so once more: \\boxed{5}", "5"),  # duplicates dropped
    ("Only one: \\boxed{4}", "4"),
    ("Early guess \\boxed{7}. " + "More reasoning here. " * 10 + "So \\boxed{1} and \\boxed{2}.", "1, 2"),  # far apart
    ("\\boxed{\\boxed{3}} and \\boxed{4}", "\\boxed{3}, 4"),  # a box inside a box is part of it
    ("\\boxed{3} and a truncated \\boxed{4", None),
    ("no box", None),
]


@pytest.mark.parametrize("text, expected", MULTI)
def test_multi_box(text, expected):
    assert extract_answer(text, "boxed", multi_box=True) == expected
    assert extract_answer(text, "auto", multi_box=True) == expected or expected is None


def test_multi_box_is_off_by_default(pool):
    text = "The solutions are $\\boxed{1}$ and $\\boxed{2}$."
    assert extract_answer(text) == "2"
    assert score([text], ["1, 2"]) == [0.0]
    assert score([text], ["1, 2"], multi_box=True) == [1.0]
    assert score([text], ["\\{2, 1\\}"], multi_box=True) == [1.0]
    assert score([text], ["1"], multi_box=True) == [0.0]  # boxing several answers is no hedge
    assert score([text], ["1, 2, 3"], multi_box=True) == [0.0]
    assert score(["\\boxed{x=1} or \\boxed{x=2}"], ["1,2"], multi_box=True) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "The final answer is " * 15000,
        "I hope it is correct. " * 10000,
        "The final answer is " * 5000 + "I hope it is correct." * 5000,
        "**Answer:** " * 20000,
        "the answer is $" * 20000,
        "\\boxed{1}" * 25000,
        "\\boxed{" * 30000,
        "\\boxed{1}" + "{" * 200000,
        "\\boxed{" * 15000 + "}" * 15000,
    ],
    ids=[
        "heads",
        "tails",
        "heads-tails",
        "bold-labels",
        "open-dollars",
        "many-boxes",
        "open-boxes",
        "open-braces",
        "nested-boxes",
    ],
)
def test_extract_linear_time(text):
    t0 = time.perf_counter()
    for mode in ANSWER_MODES:
        for multi_box in (False, True):
            extract_answer(text, mode, multi_box=multi_box)
    assert time.perf_counter() - t0 < 2.0


# ----------------------------------------------------------------------------------------------
# no_answer: format failures are counted apart from wrong answers
# ----------------------------------------------------------------------------------------------


def test_no_answer_count(pool):
    responses = [
        "\\boxed{5}",  # right
        "\\boxed{6}",  # wrong answer: not a format failure
        "So the answer is 5.",  # right (the-answer-is)
        "We compute 2 + 3 = 5.",  # no recognisable answer
        "\\boxed{",  # truncated
        "",
        None,  # not a string
        "\\boxed{}",
    ]
    got = score(responses, ["5"] * len(responses))
    assert got == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert got.no_answer == 5 and got.timeouts == 0 and got.crashes == 0
    boxed_only = score(responses, ["5"] * len(responses), mode="boxed")
    assert boxed_only == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] and boxed_only.no_answer == 6
    pm1 = score(responses[:4], ["5"] * 4, reward_range="pm1", num_workers=0)
    assert pm1 == [1.0, -1.0, 1.0, -1.0] and pm1.no_answer == 1
    assert score([], []).no_answer == 0


def test_hedged_labelled_answers_score_0(pool):
    """Two candidates in one labelled statement never match either of them."""
    texts = [
        "The answer is $5$ or $7$.",
        "The answer is $5$, $7$",
        "The answer is 5 or 7.",
        "**Answer:** $5$ or $7$",
        "Answer: $5$ or $7$",
        MINERVA.format("$5$ or $7$"),
        MINERVA.format("$5$, $7$"),
        "\\boxed{5 \\text{ or } 7}",
    ]
    for gold in ("5", "7"):
        got = score(texts, [gold] * len(texts))
        assert got == [0.0] * len(texts) and got.no_answer == 0


def test_real_formats_through_the_pool(pool):
    """Full responses in each format, graded: right answers in another form score 1, wrong ones 0."""
    responses = [
        "Let me think. 1/2 of 1 is 1/2.\n" + MINERVA.format("$0.5$"),
        "Let me think.\n" + MINERVA.format("$\\frac{1}{3}$"),
        "Adding up, we get 72 clips. The answer is 72.",
        "Adding up, we get 73 clips. The answer is 73.",
        "**Solution.** Expanding gives a square.\n\n**Answer:** $(x+1)^2$",
        "**Solution.** Expanding gives a square.\n\n**Answer:** $(x-1)^2$",
        "The roots are $\\boxed{2}$ and $\\boxed{-3}$.",
    ]
    golds = ["\\frac{1}{2}", "\\frac{1}{2}", "72", "72", "x^2+2x+1", "x^2+2x+1", "-3, 2"]
    got = score(responses, golds, timeout_s=10)
    assert got == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0] and got.no_answer == 0
    assert score(responses[-1:], golds[-1:], multi_box=True) == [1.0]


# ----------------------------------------------------------------------------------------------
# Untrusted inputs: no hang, no crash, the pool keeps working
# ----------------------------------------------------------------------------------------------


def test_pathological_inputs_do_not_hang_or_crash(pool):
    lone = "\\boxed{\ud800" + "5}"  # a lone surrogate (what a bad decode leaves)
    undecodable = b"\\boxed{\xff\xfe 5}".decode("utf-8", "surrogateescape")
    nested = "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}"  # value 1 if it were parsed
    nested_frac = "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}"
    tower = "\\boxed{9^{9^{9^{9^{9}}}}}"
    big = "\\boxed{" + "1+" * 100_000 + "1}"
    matrix = "\\boxed{\\begin{pmatrix}" + " \\\\ ".join(["1 & 2"] * 400) + "\\end{pmatrix}}"
    junk_then_right = "Reasoning \ud800\udfff" + b"\xff\xc3(".decode("utf-8", "surrogateescape") + " so \\boxed{5}"
    responses = [lone, undecodable, nested, nested_frac, tower, big, matrix, b"\\boxed{5}", junk_then_right]
    golds = ["5", "5", "2", "2", "1", "1", "1", "5", "5"]
    t0 = time.perf_counter()
    got = score(responses, golds, timeout_s=2.0)
    assert time.perf_counter() - t0 < 20
    assert got[2:] == [0.0] * 6 + [1.0]  # wrong values are wrong, bytes are not a response, junk elsewhere is harmless
    assert got.crashes == 0 and got.no_answer == 1
    assert score(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"]) == [1.0]  # the pool still works


# ----------------------------------------------------------------------------------------------
# MATH-500: every matrix gold against its compact form, entry order, interval golds
# ----------------------------------------------------------------------------------------------


def _math500_golds() -> list[str]:
    path = data_dir() / "math500" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found: RLVR_DATA_DIR has no copy of math500")
    return [json.loads(line)["answer"] for line in path.open() if line.strip()]


@needs_data
def test_math500_matrix_golds(pool):
    golds = [g for g in _math500_golds() if "\\begin{pmatrix}" in g]
    assert len(golds) == 7
    compact = [re.sub(r"\s+", "", g) for g in golds]
    assert score([f"\\boxed{{{c}}}" for c in compact], golds) == [1.0] * 7
    assert score([f"\\boxed{{{g}}}" for g in golds], compact) == [1.0] * 7
    # the same entries in another order (a vector reversed, a matrix's columns swapped): a different answer
    reordered = []
    for g in golds:
        body = re.search(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", g).group(1)
        rows = [r.strip() for r in body.split("\\\\")]
        rows = [" & ".join(reversed(r.split("&"))) for r in rows] if "&" in body else rows[::-1]
        reordered.append("\\begin{pmatrix} " + " \\\\ ".join(rows) + " \\end{pmatrix}")
    assert all(re.sub(r"\s+", "", r) != c for r, c in zip(reordered, compact))
    assert score([f"\\boxed{{{r}}}" for r in reordered], golds) == [0.0] * 7
    assert score([f"\\boxed{{{g}}}" for g in golds], reordered) == [0.0] * 7


@needs_data
def test_math500_interval_golds(pool):
    golds = _math500_golds()
    assert "x \\in [-2,7]" in golds and "(-\\infty, 0]" in golds and "(5,\\infty)" in golds
    responses = [
        "\\boxed{-2 \\le x \\le 7}",
        "\\boxed{x \\le 0}",
        "\\boxed{x > 5}",
        "\\boxed{-2 < x \\le 7}",
        "\\boxed{x < 0}",
        "\\boxed{x \\ge 5}",
    ]
    gold = ["x \\in [-2,7]", "(-\\infty, 0]", "(5,\\infty)", "x \\in [-2,7]", "(-\\infty, 0]", "(5,\\infty)"]
    assert score(responses, gold) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
