"""Data loading: the real math benchmarks, training sets, prompt templates and the synthetic testbed task.

Every loader returns records ``{"id", "question", "answer", "source"}`` where ``answer`` is a
non-empty gold answer string that ``common.reward.is_equiv`` can compare against.

``load_problems(source, ...)`` is the single entry point. ``source`` is one of

* a benchmark or training-set name (``DATASETS``: the evaluation sets in ``BENCHMARKS`` plus ``gsm8k``,
  ``dapo_math_17k`` (alias ``dapo``) and ``math_train``) or a synthetic task (``SYNTHETIC_TASKS``:
  ``paths``, the testbed's default, and ``arith``). Each named set
  is one or two pinned files (``DATA_FILES``: upstream URL at a fixed commit, row count, sha256). They are
  looked up in the data dir (``resolve_data_dir``: ``--data-dir``, else ``$RLVR_DATA_DIR``, else the
  download cache ``~/.cache/rlvr-entropy/data``), downloaded there on first use (``fetch_file``) and
  checked on every load, so everyone evaluates on the same bytes. Each set has a small record function
  below that applies its quirks (float/int golds, ``$...$``-wrapped golds, golds inside ``\\boxed{}`` or
  after ``####``, instruction templates baked into the question, ...);
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file (known benchmark files get their benchmark's rules;
  other files are read with configurable field names; no checksum);
* ``json:<path>`` / ``parquet:<path>`` / ``csv:<path>`` (a local file through ``datasets``), or a Hugging
  Face dataset id ``owner/name`` (``datasets.load_dataset``; needs hub access).

Questions of every source pass through ``repair_control_chars``: some upstream files were
JSON-escaped badly, so a control character stands where a backslash + letter was (``\\x0c`` + "rac"
is ``\\frac``, TAB + "riangle" is ``\\triangle``), and DAPO-Math-17k carries PDF ligature codes.

A bad row (missing field, empty or non-string gold, malformed JSON) raises ``DataError`` (a
``ValueError``) naming the file, the row and the field; with ``skip_invalid=True`` (the scripts'
``--skip-invalid``) it is skipped and listed in ``Problems.skipped_rows``. DAPO-Math-17k is
deduplicated (the hub copy repeats every problem ~100 times); ``Problems.duplicates`` counts the rows
dropped. Nothing is dropped silently.

The training scripts read their data through ``load_prompts`` (records with the tokenized prompt; long prompts
skipped and counted) and ``take_prompts`` (the seeded, resumable order in which they are drawn).

``python -m common.data [NAMES] [--data-dir DIR]`` downloads what is missing and checks every file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import sys
import urllib.request
from pathlib import Path

from common.reward import last_boxed

# ----------------------------------------------------------------------------------------------
# Synthetic testbed task: multi-step integer arithmetic with worked solutions ending in \boxed{}.
# ----------------------------------------------------------------------------------------------

ARITH_TEST_FRACTION = 0.1  # share of the problem space reserved for the test split (by hash)


def _arith_is_test(question: str) -> bool:
    """Deterministic split membership: a problem belongs to the test split iff its hash says so."""
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < ARITH_TEST_FRACTION


def _arith_sample(rng: random.Random, min_terms: int, max_terms: int, max_value: int) -> tuple[str, str, str]:
    """One problem: (question, worked solution, gold). Left-to-right + and - on 2-digit numbers;
    a subtraction that would go negative becomes an addition, so every intermediate value is >= 0."""
    num_terms = rng.randint(min_terms, max_terms)
    value = rng.randint(10, max_value)
    expression, steps = str(value), []
    for _ in range(num_terms - 1):
        operand = rng.randint(10, max_value)
        op = rng.choice("+-")
        if op == "-" and operand > value:
            op = "+"
        new_value = value + operand if op == "+" else value - operand
        steps.append(f"{value}{op}{operand}={new_value}.")
        expression += f"{op}{operand}"
        value = new_value
    question = f"Compute {expression}."
    solution = " ".join(steps) + f" \\boxed{{{value}}}"
    return question, solution, str(value)


def _generate(task: str, num: int, split: str, seed: int, sample, is_test) -> list[dict]:
    """``num`` distinct problems of one split of a synthetic task: ``sample(rng)`` draws a record (``question``,
    ``answer``, ``solution``, ...) and the split keeps those whose ``is_test(question)`` matches it."""
    if split not in ("train", "test"):
        raise ValueError(f"{task} split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{task}-{split}-{seed}")
    records: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(records) < num:
        attempts += 1
        if attempts > 100 * num + 10_000:
            raise RuntimeError(f"could not generate {num} distinct {task} {split} problems; widen the task")
        record = sample(rng)
        if is_test(record["question"]) != (split == "test") or record["question"] in seen:
            continue
        seen.add(record["question"])
        head = {"id": f"{task}-{split}-{len(records)}", "question": record["question"], "answer": record["answer"]}
        records.append({**head, "source": task, **record})
    return records


def make_arith_problems(
    num: int,
    split: str = "train",
    seed: int = 0,
    min_terms: int = 3,
    max_terms: int = 4,
    max_value: int = 99,
) -> list[dict]:
    """Generate ``num`` synthetic arithmetic problems of one split.

    The two splits are disjoint by construction (membership is a hash of the question text) and
    deterministic given ``seed``. Each record also carries ``solution`` (a worked solution ending in
    ``\\boxed{gold}``) for supervised fine-tuning.
    """

    def sample(rng: random.Random) -> dict:
        question, solution, gold = _arith_sample(rng, min_terms, max_terms, max_value)
        return {"question": question, "answer": gold, "solution": solution}

    return _generate("arith", num, split, seed, sample, _arith_is_test)


# ----------------------------------------------------------------------------------------------
# Synthetic testbed task "paths" (the scripts' default): a+b+c with several ways of solving it.
# ----------------------------------------------------------------------------------------------
#
# Every question is "Compute a+b+c." with a, b, c in 10..99. A worked solution takes one of
#
# * a *pairwise* path (neutral: any of them is correct): add two of the numbers, then the third, in any
#   order, with any of PATHS_SEPARATORS between the steps, the last equation ending in the box:
#       "83+51=134, 134+39=\boxed{173}"   "39+83=122; 51+122=\boxed{173}"   ...   (6 x 2 x 3 = 36 paths)
#   so a sampled solution forks at the first digit (which number first), after "+" (which second), at
#   the separator and at the second step's order;
# * the *careful* (column) path: units digits, then tens digits plus the carry, one digit at a time with
#   the running total, then the answer (the tens total followed by the units total's last digit):
#       "units 3+1=4+9=13, tens 8+5=13+3=16+1=17, \boxed{173}"
#   smaller steps (one single digit added at a time), recognisable by its first word (``paths_format``).
#
# The testbed builder (testbed/build_testbed.py) fine-tunes on a mixture in which the careful path is
# rarely chosen but well practised, so that RL can find that choosing it pays (README, "Testbed model").

PATHS_TEST_FRACTION = 0.1  # share of the problem space reserved for the test split (by hash)
PATHS_SEPARATORS = (", ", "; ", ". ")
PATHS_FORMATS = ("careful", "pairwise")


def _paths_is_test(question: str) -> bool:
    digest = hashlib.sha256(f"paths:{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < PATHS_TEST_FRACTION


def _running_sum(digits: list[int]) -> str:
    """Single-digit steps with the running total: [2, 8, 8] -> "2+8=10+8=18"."""
    text, total = str(digits[0]), digits[0]
    for d in digits[1:]:
        total += d
        text += f"+{d}={total}"
    return text


def paths_solution(terms: tuple[int, int, int], fmt: str, rng: random.Random) -> str:
    """A worked solution of ``Compute a+b+c.`` in format ``fmt`` (``PATHS_FORMATS``); ``rng`` picks the
    pairwise path's order and separator (the careful path has none to pick)."""
    if fmt == "careful":
        units, tens = [t % 10 for t in terms], [t // 10 for t in terms]
        carry = sum(units) // 10
        return f"units {_running_sum(units)}, tens {_running_sum(tens + [carry])}, \\boxed{{{sum(terms)}}}"
    if fmt != "pairwise":
        raise ValueError(f"unknown paths format {fmt!r}; choose one of {PATHS_FORMATS}")
    x, y, z = rng.sample(list(terms), 3)
    partial = x + y
    second = f"{partial}+{z}" if rng.random() < 0.5 else f"{z}+{partial}"
    return f"{x}+{y}={partial}{rng.choice(PATHS_SEPARATORS)}{second}=\\boxed{{{partial + z}}}"


def paths_format(completion: str) -> str:
    """The format a (sampled) solution uses: ``careful`` (starts with "units"), ``pairwise`` (starts with
    "<number>+<number>=") or ``other``."""
    text = completion.lstrip()
    if text.startswith("units"):
        return "careful"
    if re.match(r"\d+\+\d+=", text):
        return "pairwise"
    return "other"


def make_paths_problems(num: int, split: str = "train", seed: int = 0, careful_share: float = 0.0) -> list[dict]:
    """Generate ``num`` distinct ``paths`` problems of one split (disjoint by a hash of the question,
    deterministic given ``seed``). Each record carries ``terms`` and a ``solution`` (careful with
    probability ``careful_share``, else a random pairwise path) for supervised fine-tuning."""

    def sample(rng: random.Random) -> dict:
        terms = (rng.randint(10, 99), rng.randint(10, 99), rng.randint(10, 99))
        fmt = "careful" if rng.random() < careful_share else "pairwise"
        return {
            "question": f"Compute {terms[0]}+{terms[1]}+{terms[2]}.",
            "answer": str(sum(terms)),
            "solution": paths_solution(terms, fmt, rng),
            "terms": list(terms),
        }

    return _generate("paths", num, split, seed, sample, _paths_is_test)


# ----------------------------------------------------------------------------------------------
# Synthetic task "graded" (the study's testbed): six problem families, each with its own rare, better way.
# ----------------------------------------------------------------------------------------------
#
# Every question is "Compute a+b." or "Compute a+b+c." with the term widths of one of GRADED_FAMILIES
# (drawn uniformly); the widths tell the family. A worked solution takes one of two ways, and only one
# path each, so that no choice in a response is interchangeable: every token either decides the method
# or is a step that is right or wrong.
#
# * *quick*: left to right, one equation per term after the first:
#       "83+51=134, 134+9=\boxed{143}"        "483+251=\boxed{734}"
# * *careful*: one column at a time, units first, one digit added at a time with the running total, the
#   carry added last in every column after the first; the response opens with the family's own word
#   (``units``, ``right``, ``digits``, ``place``, ``ones``, ``cols``), so that finding it in one family
#   does not by itself find it in another:
#       "right 3+1=4+9=13, 8+5=13+1=14, \boxed{143}"
#
# The testbed builder trains a mixture in which each family's careful path is practised but chosen
# rarely, at a rate of its own (``--family-choice``), so RL can make up to six discoveries, each paying
# a different amount (README, "Testbed model").

GRADED_TEST_FRACTION = 0.1  # share of the problem space reserved for the test split (by hash)
GRADED_FAMILIES = (  # (name, digits of each term, the first word of its careful path)
    ("a", (2, 2), "units"),
    ("b", (2, 2, 1), "right"),
    ("c", (3, 2), "digits"),
    ("d", (2, 3), "place"),
    ("e", (2, 2, 2), "ones"),
    ("f", (3, 3), "cols"),
)
GRADED_FORMATS = ("careful", "quick")


def _graded_is_test(question: str) -> bool:
    digest = hashlib.sha256(f"graded:{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < GRADED_TEST_FRACTION


def graded_family(question: str) -> str | None:
    """The family (``GRADED_FAMILIES`` name) of a ``graded`` question, from its terms' widths; None if none."""
    match = re.fullmatch(r"Compute ([\d+]+)\.", question.strip())
    if not match:
        return None
    widths = tuple(len(term) for term in match.group(1).split("+"))
    return next((name for name, family_widths, _ in GRADED_FAMILIES if family_widths == widths), None)


def graded_solution(terms: tuple[int, ...], fmt: str, word: str) -> str:
    """A worked solution of ``Compute a+b(+c).`` in format ``fmt`` (``GRADED_FORMATS``); ``word`` opens the
    careful path."""
    if fmt == "quick":
        steps, total = [], terms[0]
        for term in terms[1:]:
            steps.append(f"{total}+{term}={total + term}")
            total += term
        return ", ".join(steps[:-1] + [steps[-1].replace("=", "=\\boxed{") + "}"])
    if fmt != "careful":
        raise ValueError(f"unknown graded format {fmt!r}; choose one of {GRADED_FORMATS}")
    reversed_digits = [str(t)[::-1] for t in terms]
    columns, carry = [], 0
    for place in range(max(len(d) for d in reversed_digits)):
        column = [int(d[place]) for d in reversed_digits if place < len(d)] + ([carry] if place else [])
        columns.append(_running_sum(column))
        carry = sum(column) // 10
    return f"{word} {', '.join(columns)}, \\boxed{{{sum(terms)}}}"


def graded_format(completion: str, family: str | None = None) -> str:
    """The format a (sampled) ``graded`` solution uses: ``careful`` (opens with a careful word: any family's, or
    with ``family`` given, that family's own), ``quick`` (opens with "<number>+<number>=") or ``other``."""
    text = completion.lstrip()
    if any(text.startswith(word) for name, _, word in GRADED_FAMILIES if family in (None, name)):
        return "careful"
    if re.match(r"\d+\+\d+=", text):
        return "quick"
    return "other"


def make_graded_problems(num: int, split: str = "train", seed: int = 0, careful_share: float = 0.0) -> list[dict]:
    """Generate ``num`` distinct ``graded`` problems of one split (disjoint by a hash of the question,
    deterministic given ``seed``), families drawn uniformly. Each record carries ``terms``, ``family`` and a
    ``solution`` (careful with probability ``careful_share``, else quick) for supervised fine-tuning."""

    def sample(rng: random.Random) -> dict:
        name, widths, word = rng.choice(GRADED_FAMILIES)
        terms = tuple(rng.randint(10 ** (w - 1) if w > 1 else 1, 10**w - 1) for w in widths)
        fmt = "careful" if rng.random() < careful_share else "quick"
        return {
            "question": f"Compute {'+'.join(map(str, terms))}.",
            "answer": str(sum(terms)),
            "solution": graded_solution(terms, fmt, word),
            "terms": list(terms),
            "family": name,
        }

    return _generate("graded", num, split, seed, sample, _graded_is_test)


def careful_format(task: str, completion: str) -> bool | None:
    """Whether a response to a testbed task (``paths``, ``graded``) takes the task's careful path; None for
    other tasks."""
    if task == "paths":
        return paths_format(completion) == "careful"
    if task == "graded":
        return graded_format(completion) == "careful"
    return None


SYNTHETIC_TASKS = ("paths", "graded", "arith")  # generated, not downloaded; each has a train and a test split
DEFAULT_TASK = "paths"  # the testbed model's task: the scripts' default --train-data / --eval-data


# ----------------------------------------------------------------------------------------------
# Prompt templates
# ----------------------------------------------------------------------------------------------

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{question}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
PLAIN_TEMPLATE = "Q: {question}\nA: "
TEMPLATES = ("qwen-math", "dapo", "plain")


def build_prompt(question: str, template: str, tokenizer=None) -> str:
    """Wrap a bare question in a prompt template.

    * ``qwen-math``: the tokenizer's chat template with the Qwen-Math system prompt; the literal
      ChatML string when the tokenizer has no chat template (or none is given).
    * ``dapo``: the DAPO "Answer:" instruction as a single user turn (chat template if available).
    * ``plain``: ``"Q: {question}\\nA: "`` for the testbed model (no chat markup).
    """
    if template == "plain":
        return PLAIN_TEMPLATE.format(question=question)
    if template == "qwen-math":
        messages = [{"role": "system", "content": QWEN_MATH_SYSTEM}, {"role": "user", "content": question}]
    elif template == "dapo":
        messages = [{"role": "user", "content": DAPO_INSTRUCTION.format(question=question)}]
    else:
        raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


# ----------------------------------------------------------------------------------------------
# The named data sets: pinned public files, downloaded once into the data dir and checked
# ----------------------------------------------------------------------------------------------

BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench")
DATASETS = (*BENCHMARKS, "gsm8k", "dapo_math_17k", "math_train")
REPO_DIR = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "RLVR_DATA_DIR"  # a directory of local copies (the layout of DATA_FILES)
MIRROR_ENV = "RLVR_DATA_MIRROR"  # a base URL or folder with that layout, used instead of the upstream URLs


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_QWEN = ("QwenLM/Qwen2.5-Math", "a45202bd16f1ec06f433442dc1152d0074773465")  # evaluation/LICENSE: MIT
_GSM8K = ("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c")  # MIT

# file under the data dir -> (upstream URL at a pinned commit, rows, sha256 of the file's bytes).
# Sources and licences: README, "Getting the data". The data dir mirrors these paths.
DATA_FILES = {
    "aime24/test.jsonl": (
        _github(*_QWEN, "evaluation/data/aime24/test.jsonl"),
        30,
        "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac",
    ),
    # removed from AReaL's main branch later; this commit still has it
    "aime25/test.jsonl": (
        _github("inclusionAI/AReaL", "f55fe685c661b0117d888fcae47d6f46e9a85087", "evaluation/data/aime25/test.jsonl"),
        30,
        "b4e273c02d3e7fe1b74b59eae768fc8230bfb0f79539890cb56f4361caac0331",
    ),
    "amc23/test.jsonl": (
        _github(*_QWEN, "evaluation/data/amc23/test.jsonl"),
        40,
        "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4",
    ),
    # byte-identical to OpenAI's MATH-500 split (openai/prm800k, prm800k/math_splits/test.jsonl)
    "math500/test.jsonl": (
        _github(
            "hkust-nlp/simpleRL-reason",
            "cf1c7858bfc145a27aa733e75d930d34f0d318a6",
            "examples/simplelr_math_eval/data/math500/test.jsonl",
        ),
        500,
        "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    ),
    "minerva_math/test.jsonl": (
        _github(*_QWEN, "evaluation/data/minerva_math/test.jsonl"),
        272,
        "0e656b430d3a0a1dab6aa853f453ba3805e28e2cabe4fc72486a897cc09d8ba2",
    ),
    "olympiadbench/test.jsonl": (
        _github(*_QWEN, "evaluation/data/olympiadbench/test.jsonl"),
        675,
        "bb8c1e38a16ea9eacb77530315a674d883f267fbff79183effc53681b4fcc416",
    ),
    "gsm8k/train.jsonl": (
        _github(*_GSM8K, "grade_school_math/data/train.jsonl"),
        7473,
        "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    ),
    "gsm8k/test.jsonl": (
        _github(*_GSM8K, "grade_school_math/data/test.jsonl"),
        1319,
        "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    ),
    # a deduplicated, re-templated copy of BytedTsinghua-SIA/DAPO-Math-17k (17,398 rows, not ~1.79M)
    "dapo_math_17k/DAPO-Math-17k.parquet": (
        _github("zz-haooo/STEER", "b31df71652cd103ddc3512656a430c39ba15dd13", "datasets/DAPO-Math-17k.parquet"),
        17398,
        "8a8347311181c89f2316b88363ab9f3a05d0f62b1b19cb4197bd08e435129b34",
    ),
    # the MATH train split (DigitalLearningGmbH/MATH-lighteval) in verl's format
    "math_train/train.parquet": (
        _github("tmlr-group/RePO", "c2f026fadadb17fb749e7d876fc8b5d4fd66b64f", "data/math/train.parquet"),
        7500,
        "7aadb17b2f8a6a96e73dfbe74b381d80c7a692b80fc7c17301b2c21b8c17a5a3",
    ),
}


class Problems(list):
    """A plain ``list`` of records that also says which rows were skipped (``skip_invalid=True``) and how
    many duplicate rows were dropped (DAPO-Math-17k)."""

    def __init__(self, records=(), skipped_rows=(), duplicates: int = 0):
        super().__init__(records)
        self.skipped_rows: list[str] = list(skipped_rows)  # "file:row: field: reason"
        self.duplicates = duplicates

    @property
    def skipped(self) -> int:
        return len(self.skipped_rows)


class DataError(ValueError):
    """Data that cannot be used as it is: a bad row, a file that is not the pinned one, an unknown name."""


class DataNotFoundError(FileNotFoundError):
    """A data file that is neither on disk nor downloadable."""


class _BadRow(Exception):
    """A row that cannot become a record; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")


def default_data_dir() -> Path:
    """The download cache: ``$XDG_CACHE_HOME/rlvr-entropy/data``, i.e. ``~/.cache/rlvr-entropy/data``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "rlvr-entropy" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` (``--data-dir``) if given, else ``$RLVR_DATA_DIR``, else the download cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return default_data_dir()


def file_stats(path: Path, parquet: bool | None = None) -> tuple[int | None, str]:
    """(rows, sha256 of the bytes) of a data file: rows of a parquet file (None when its footer cannot be
    read), else non-empty lines. ``parquet`` defaults to the file name's extension."""
    data = path.read_bytes()
    if parquet if parquet is not None else path.name.endswith(".parquet"):
        import io

        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        except Exception:  # truncated or not parquet at all: the checksum will say so
            rows = None
    else:
        rows = sum(1 for line in data.splitlines() if line.strip())
    return rows, hashlib.sha256(data).hexdigest()


def verify_file(path: Path, rel: str, what: str | None = None) -> None:
    """Raise ``DataError`` unless ``path`` has the pinned rows and sha256 of ``DATA_FILES[rel]``."""
    _, rows, sha256 = DATA_FILES[rel]
    got_rows, got_sha256 = file_stats(path, parquet=rel.endswith(".parquet"))
    if (got_rows, got_sha256) != (rows, sha256):
        raise DataError(
            f"{what or path}: not the pinned {rel} (expected {rows} rows, sha256 {sha256}; got {got_rows} rows, "
            f"sha256 {got_sha256})"
            + (
                ""
                if what
                else "; delete it to download it again, or pass the file's "
                "path instead of the data set's name to load a modified copy"
            )
        )


def _download(url: str, dest: Path) -> None:
    """Copy ``url`` (https:// or file://) to ``dest``: the only network access of this module."""
    import shutil

    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def fetch_file(rel: str, data_dir: str | os.PathLike | None = None, source: str | None = None) -> Path:
    """The path of ``rel`` (a key of ``DATA_FILES``) in the data dir, downloaded there first if it is
    missing, and checked (rows, sha256). ``source`` (else ``$RLVR_DATA_MIRROR``), a base URL or a local
    folder with the data dir's layout, replaces the upstream URL."""
    root = resolve_data_dir(data_dir)
    path = root / rel
    if not path.is_file():
        url = DATA_FILES[rel][0]
        base = source or os.environ.get(MIRROR_ENV)
        if base:
            base = base if "://" in base else Path(base).expanduser().resolve().as_uri()
            url = f"{base.rstrip('/')}/{rel}"
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _download(url, part)
        except (OSError, ValueError) as e:  # URLError is an OSError; ValueError: a malformed URL
            part.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if this left it empty
            reason = getattr(e, "reason", None) or e
            raise DataNotFoundError(
                f"data set {rel.split('/')[0]!r} needs {rel}, which is not in the data dir {root} and could not be "
                f"downloaded from {url} ({reason}); point --data-dir (or the {DATA_DIR_ENV} environment variable) "
                f"at a directory that holds {rel}, e.g. one filled by `python -m common.data --data-dir DIR` on a "
                f"machine with internet access"
            ) from None
        try:
            verify_file(part, rel, what=f"the download from {url}")
        except DataError:
            part.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()
            raise
        os.replace(part, path)
        print(f"downloaded {url} -> {path}", file=sys.stderr)
    verify_file(path, rel)
    return path


# --- text repair ------------------------------------------------------------------------------

# A JSON/Python string escape turned "\<letter>" into a control character: "\frac" -> "\x0c" + "rac".
_ESCAPES = {"\x07": "a", "\x08": "b", "\t": "t", "\n": "n", "\x0b": "v", "\x0c": "f", "\r": "r"}
_LATEX_COMMANDS = set(
    "alpha angle approx arccos arcsin arctan ast "
    "bar begin beta big bigg bigl bigr bigcap bigcup binom bmod bot boxed bullet because "
    "text textbf textit textrm textsf texttt textstyle tfrac tbinom theta tilde times triangle therefore "
    "tau tan top to nabla newline notin nonumber neq ne nu not "
    "vec varphi varepsilon vartheta vdots vee vert vline "
    "frac forall flat fbox right rangle rceil rfloor rightarrow rbrace rho rm".split()
)
_ESCAPE_RE = re.compile(r"([\x07\x08\t\n\x0b\x0c\r])([A-Za-z]+)")
# PDF text in OT1 encoding: 0x0b-0x0f are the ff/fi/fl/ffi/ffl ligatures (0x0d = "\r" is left alone).
_LIGATURES = {"\x0b": "ff", "\x0c": "fi", "\x0e": "ffi", "\x0f": "ffl"}
_LIGATURE_RE = re.compile(r"[\x0b\x0c\x0e\x0f]+")
_STRAY_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 (not TAB/LF/CR), DEL, C1


def _fix_escape(m: re.Match) -> str:
    char, tail = m.group(1), m.group(2)
    command = _ESCAPES[char] + tail
    # TAB/newline/CR are also legitimate whitespace: only repair unambiguous (3+ letter) tails.
    if command in _LATEX_COMMANDS and (char not in "\t\n\r" or len(tail) >= 3):
        return "\\" + command
    return m.group(0)


def _fix_ligature(m: re.Match) -> str:
    if len(m.group(0)) > 1:
        return ""  # a run of control characters is debris, not text
    before, after = m.string[: m.start()], m.string[m.end() :]
    ligature = _LIGATURES[m.group(0)]
    if before.endswith(ligature) or after.startswith(ligature):
        return ""  # "fi\x0cve", "\x0cfirst": the letters are there already
    if (before[-1:].isascii() and before[-1:].isalpha()) or re.match(r"[a-z]{2}", after):
        return ligature  # "\x0cnd" -> "find", "de\x0cne" -> "define"
    return ""


def repair_control_chars(text: str) -> str:
    """Undo control-character damage: LaTeX commands whose backslash + first letter became a control
    character, OT1 ligature codes from PDF extraction, and any other stray control character.
    TAB, newline and CR are kept unless they are part of such a damaged command."""
    text = _ESCAPE_RE.sub(_fix_escape, text)
    text = _LIGATURE_RE.sub(_fix_ligature, text)
    return _STRAY_CONTROL_RE.sub("", text)


# --- field helpers ----------------------------------------------------------------------------


def _get(row: dict, field: str):
    """``row[field]`` where ``field`` may be a dotted path into nested dicts."""
    if field in row:
        return row[field]
    value = row
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _BadRow(field, "missing")
        value = value[part]
    return value


def _has(row: dict, field: str) -> bool:
    try:
        _get(row, field)
        return True
    except _BadRow:
        return False


def _text(row: dict, field: str) -> str:
    value = _get(row, field)
    if not isinstance(value, str):
        raise _BadRow(field, f"expected a string, got {type(value).__name__}")
    value = repair_control_chars(value).strip()
    if not value:
        raise _BadRow(field, "empty")
    return value


def _gold(value, field: str) -> str:
    """A non-empty gold string; ints and integral floats (``27.0``) become ``"27"``."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or value is None:
        raise _BadRow(field, f"gold is {value!r}, not a string")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _BadRow(field, f"gold is {value!r}")
        value = str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        raise _BadRow(field, f"gold is a {type(value).__name__}, not a string")
    if not value.strip():
        raise _BadRow(field, "empty gold")
    return value.strip()


def _boxed_gold(row: dict, field: str = "solution") -> str:
    gold = last_boxed(_text(row, field))
    if gold is None:
        raise _BadRow(field, "no \\boxed{...} answer")
    return _gold(gold, f"{field} (\\boxed)")


def _row_id(row: dict, index: int) -> str:
    for field in ("id", "idx", "unique_id", "extra_info.index"):
        if _has(row, field) and _get(row, field) is not None:
            return str(_get(row, field))
    return str(index)


# --- one record function per benchmark: row -> (question, gold, extra keys) --------------------


def _problem_answer(row: dict):  # aime24 (str), aime25 (int), amc23 (float), math500 (LaTeX str)
    extra = {k: row[k] for k in ("subject", "level") if k in row}
    return _text(row, "problem"), _gold(_get(row, "answer"), "answer"), extra


def _minerva(row: dict):
    return _text(row, "problem"), _boxed_gold(row), {}


def _olympiad_gold(final_answer) -> str:
    if not isinstance(final_answer, list) or not final_answer:
        raise _BadRow("final_answer", f"expected a non-empty list, got {final_answer!r}")
    parts = []
    for part in final_answer:
        if not isinstance(part, str):
            raise _BadRow("final_answer", f"gold is a {type(part).__name__}, not a string")
        # "$2^{1009}$" -> 2^{1009}; "$69$,$84$" -> 69,84; "$(-\infty, 0) \cup\{1\}$." -> no period
        parts.append(re.sub(r"(?<!\\)\$", "", part).strip().removesuffix(".").strip())
    return _gold(",".join(parts), "final_answer")


def _olympiadbench(row: dict):
    question = _text(row, "question")
    if isinstance(row.get("context"), str) and row["context"].strip():
        question = repair_control_chars(row["context"]).strip() + "\n\n" + question
    extra = {k: row[k] for k in ("unit", "error", "is_multiple_answer", "answer_type") if k in row}
    return question, _olympiad_gold(_get(row, "final_answer")), extra


def _gsm8k(row: dict):
    solution = _text(row, "answer")
    if "####" not in solution:
        raise _BadRow("answer", "no '#### <final answer>' line")
    return _text(row, "question"), _gold(solution.rsplit("####", 1)[1].replace(",", ""), "answer (after ####)"), {}


DAPO_EN_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form \\boxed{Answer} where Answer is the answer to the problem.\n\n"
)
DAPO_EN_SUFFIX = "\n\nRemember to put your answer in \\boxed{...} format on its own line."
# The Chinese prompts end with this paragraph once (3262 rows) or twice, “curly” then "straight" (20 rows).
DAPO_ZH_SUFFIX_RE = re.compile(
    r"(?:\s*让我们一步一步地思考。请以[“\"]Answer: \\boxed\{<final_answer>\}[”\"]的格式输出最终答案。"
    r"如果是选择题，请按顺序输出正确的选项，不带任何标点或空格。对于其他类型的问题，请只输出最终答案的数值。)+\s*$"
)

# The hub original (BytedTsinghua-SIA/DAPO-Math-17k) wraps every problem in the "Answer:" instruction.
DAPO_HUB_PREFIX, DAPO_HUB_SUFFIX = DAPO_INSTRUCTION.split("{question}")


def _dapo(row: dict):
    prompt = _get(row, "prompt")
    if not (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)):
        raise _BadRow("prompt", "expected a list of chat messages")
    content = _text(prompt[0], "content")
    if content.startswith(DAPO_EN_PREFIX) and content.endswith(DAPO_EN_SUFFIX.strip()):
        question = content[len(DAPO_EN_PREFIX) :].removesuffix(DAPO_EN_SUFFIX.strip())
    elif content.startswith(DAPO_HUB_PREFIX) and content.endswith(DAPO_HUB_SUFFIX.strip()):
        question = content[len(DAPO_HUB_PREFIX) :].removesuffix(DAPO_HUB_SUFFIX.strip())
    elif DAPO_ZH_SUFFIX_RE.search(content):
        question = DAPO_ZH_SUFFIX_RE.sub("", content)
    else:
        raise _BadRow("prompt[0].content", "unrecognised instruction template")
    if not question.strip():
        raise _BadRow("prompt[0].content", "empty question after removing the template")
    return question.strip(), _gold(_get(row, "reward_model.ground_truth"), "reward_model.ground_truth"), {}


MATH_TRAIN_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."


def _math_train(row: dict):
    question = _text(row, "problem").removesuffix(MATH_TRAIN_SUFFIX.strip()).strip()
    extra = {"level": row.get("level"), "subject": row.get("type")}
    return question, _gold(_get(row, "reward_model.ground_truth"), "reward_model.ground_truth"), extra


# name -> (record function, {split: file under the data dir}); the first split is the default.
_BENCHMARK_SPECS = {
    "aime24": (_problem_answer, {"test": "aime24/test.jsonl"}),
    "aime25": (_problem_answer, {"test": "aime25/test.jsonl"}),
    "amc23": (_problem_answer, {"test": "amc23/test.jsonl"}),
    "math500": (_problem_answer, {"test": "math500/test.jsonl"}),
    "minerva_math": (_minerva, {"test": "minerva_math/test.jsonl"}),
    "olympiadbench": (_olympiadbench, {"test": "olympiadbench/test.jsonl"}),
    "gsm8k": (_gsm8k, {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"}),
    "dapo_math_17k": (_dapo, {"train": "dapo_math_17k/DAPO-Math-17k.parquet"}),
    "math_train": (_math_train, {"train": "math_train/train.parquet"}),
}
_ALIASES = {"dapo": "dapo_math_17k", "dapo-math-17k": "dapo_math_17k", "math-500": "math500"}
_DEDUPLICATE = {"dapo_math_17k"}  # sets whose copies repeat problems: keep the first of equal (question, gold)
_HUB_IDS = {"bytedtsinghua-sia/dapo-math-17k": "dapo_math_17k"}  # hub originals read with a named set's rules


def _generic_record(question_field: str | None, answer_field: str | None):
    """Record function for files of unknown layout (configurable, with sensible fallbacks)."""

    def record(row: dict):
        q_field = question_field or next((f for f in ("problem", "question") if f in row), "problem")
        if answer_field:
            gold = _gold(_get(row, answer_field), answer_field)
        else:
            a_field = next((f for f in ("answer", "final_answer", "reward_model.ground_truth") if _has(row, f)), None)
            if a_field == "final_answer":  # OlympiadBench style: a list, maybe "$...$"-wrapped
                value = _get(row, a_field)
                gold = _olympiad_gold(value if isinstance(value, list) else [value])
            elif a_field:
                gold = _gold(_get(row, a_field), a_field)
            elif "solution" in row:
                gold = _boxed_gold(row)
            else:
                raise _BadRow(
                    "answer", "missing (looked for answer, final_answer, reward_model.ground_truth, solution)"
                )
        return _text(row, q_field), gold, {}

    return record


# --- row readers: yield (row label for messages, row or None, parse error or None) -------------


def _read_rows(path: Path):
    """Rows of a local file; an empty file (no bytes, only blank lines, ``[]``, a parquet file without rows) and an
    unreadable ``.json`` / ``.parquet`` file raise ``DataError`` naming the file."""
    rows = 0
    for item in _read_file_rows(path):
        rows += 1
        yield item
    if rows == 0:
        raise DataError(f"{path}: the file is empty: no rows to load")


def _read_file_rows(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:  # without its newline: a row cut short is an error at its end, not at "line 2, column 1"
                    yield f"{path}:line {line_no}", json.loads(line.rstrip("\n")), None
                except json.JSONDecodeError as e:
                    yield (
                        f"{path}:line {line_no}",
                        None,
                        f"malformed JSON ({e.msg} at line {line_no}, column {e.colno})",
                    )
    elif suffix == ".json":
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if not text.strip():
            return
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            yield f"{path}:row {i} (0-based)", row, None
    elif suffix == ".parquet":
        if path.stat().st_size == 0:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                f"{path}: not a readable parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}:row {i} (0-based)", row, None
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _collect(rows, record_fn, source: str, skip_invalid: bool, limit: int | None, dedupe: bool = False) -> Problems:
    problems = Problems()
    seen: set[tuple[str, str]] = set()
    for index, (where, row, error) in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        try:
            if error is not None:
                raise _BadRow("<json>", error)
            if not isinstance(row, dict):
                raise _BadRow("<row>", f"expected a JSON object, got {type(row).__name__}")
            question, gold, extra = record_fn(row)
        except _BadRow as bad:
            message = f"{where}: {bad}"
            if not skip_invalid:
                raise DataError(f"{message} (rerun with --skip-invalid to skip such rows and count them)") from None
            problems.skipped_rows.append(message)
            continue
        if dedupe:
            if (question, gold) in seen:
                problems.duplicates += 1
                continue
            seen.add((question, gold))
        problems.append({"id": _row_id(row, index), "question": question, "answer": gold, "source": source, **extra})
    if problems.duplicates:
        print(
            f"note: {source}: dropped {problems.duplicates} duplicate rows (same question and gold answer), "
            f"kept {len(problems)} problems"
        )
    return problems


def _benchmark_for_path(path: Path) -> str | None:
    """The benchmark whose rules apply to a local file: by its directory name (``<data dir>/aime25/...``)
    or by a distinctive file name (``DAPO-Math-17k.parquet``, also the hub original's ``dapo-math-17k.parquet``)."""
    for name, (_, files) in _BENCHMARK_SPECS.items():
        distinctive = {Path(rel).name.lower() for rel in files.values()} - {
            "test.jsonl",
            "train.jsonl",
            "train.parquet",
        }
        if path.parent.name == name or path.name.lower() in distinctive:
            return name
    return None


_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_source(source: str) -> None:
    """Raise ``DataError`` / ``DataNotFoundError`` unless ``source`` names something ``load_problems`` can
    read: a known name, an existing local file (``json:<path>`` etc. included) or a hub id ``owner/name``.
    Cheap: nothing is read or downloaded."""
    if _ALIASES.get(source.lower(), source.lower()) in (*_BENCHMARK_SPECS, *SYNTHETIC_TASKS):
        return
    builder, _, data_files = source.partition(":")
    if builder in ("json", "parquet", "csv") and data_files:
        if not Path(data_files).expanduser().is_file():
            raise DataNotFoundError(f"{source}: no such file: {data_files}")
        return
    path = Path(source).expanduser()
    if path.is_file():
        return
    if path.is_dir():
        raise DataNotFoundError(f"{source}: a directory, not a data file (.jsonl, .json or .parquet)")
    if path.suffix.lower() in (".jsonl", ".json", ".parquet") or source.startswith((".", "/", "~")):
        raise DataNotFoundError(f"{source}: no such file")
    if not (_HUB_ID_RE.match(source) and path.parts[0] not in (".", "..")):
        raise DataError(
            f"unknown data set {source!r}: use one of {', '.join((*DATASETS, *SYNTHETIC_TASKS))}, "
            "a local .jsonl/.json/.parquet file, or a Hugging Face dataset id (owner/name)"
        )


def load_problems(
    source: str,
    split: str | None = None,
    data_dir: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
) -> Problems:
    """Load ``{"id", "question", "answer", "source", ...extra}`` records (see the module docstring).

    ``split`` picks gsm8k's ``train``/``test`` file (default ``test``), the split of a synthetic task
    (``arith``, ``paths``; default ``train``) or a Hugging Face split (default ``train``). ``limit`` keeps
    the first ``limit`` records.
    ``question_field``/``answer_field`` (dotted paths allowed) switch to generic field extraction.
    A named set's file is downloaded into the data dir if it is missing there (``fetch_file``).
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    check_source(source)
    fields_given = question_field is not None or answer_field is not None
    name = _ALIASES.get(source.lower(), source.lower())

    if name in SYNTHETIC_TASKS:
        split = split or "train"
        num = limit if limit is not None else (20000 if split == "train" else 500)
        make = {"arith": make_arith_problems, "paths": make_paths_problems, "graded": make_graded_problems}[name]
        return Problems(make(num, split, seed=0))

    if name in _BENCHMARK_SPECS:
        record_fn, files = _BENCHMARK_SPECS[name]
        split = split or next(iter(files))
        if split not in files:
            raise DataError(f"{name} has splits {tuple(files)}, not {split!r}")
        path = fetch_file(files[split], data_dir)
        record_fn = _generic_record(question_field, answer_field) if fields_given else record_fn
        return _collect(_read_rows(path), record_fn, name, skip_invalid, limit, dedupe=name in _DEDUPLICATE)

    builder, _, data_files = source.partition(":")
    path = Path(source).expanduser()
    if not (builder in ("json", "parquet", "csv") and data_files) and path.is_file():
        benchmark = None if fields_given else _benchmark_for_path(path)
        record_fn = _BENCHMARK_SPECS[benchmark][0] if benchmark else _generic_record(question_field, answer_field)
        return _collect(
            _read_rows(path), record_fn, benchmark or str(path), skip_invalid, limit, dedupe=benchmark in _DEDUPLICATE
        )

    # Hugging Face datasets: "json:<path>" / "parquet:<path>" / "csv:<path>" (local, offline) or a hub id.
    import datasets

    if builder in ("json", "parquet", "csv") and data_files:
        dataset = datasets.load_dataset(builder, data_files=data_files, split=split or "train")
    else:
        dataset = datasets.load_dataset(source, split=split or "train")
    rows = ((f"{source}[{split or 'train'}]:row {i} (0-based)", row, None) for i, row in enumerate(dataset))
    benchmark = None if fields_given else _HUB_IDS.get(source.lower())
    record_fn = _BENCHMARK_SPECS[benchmark][0] if benchmark else _generic_record(question_field, answer_field)
    return _collect(rows, record_fn, source, skip_invalid, limit, dedupe=benchmark in _DEDUPLICATE)


def load_prompts(
    source: str,
    split: str | None,
    tokenizer,
    template: str,
    max_prompt_length: int,
    data_dir: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    per_step: int = 0,
    flag: str = "",
) -> list[dict]:
    """The training scripts' loader: ``load_problems`` records with ``prompt_ids`` (``build_prompt``, tokenized).
    Prompts over ``max_prompt_length`` tokens are skipped and counted; a data error of any source is a ``DataError``
    whose message starts with ``flag`` (the option that named the source); a training set (no ``limit``) smaller
    than one step's ``per_step`` prompts is said."""
    try:
        problems = load_problems(source, split=split, data_dir=data_dir, limit=limit, skip_invalid=skip_invalid)
    except (ValueError, FileNotFoundError) as error:  # hub datasets raise their own FileNotFoundError subclasses
        message = str(error) if str(error).startswith(source) else f"{source}: {error}"
        raise DataError(f"{flag} {message}".strip()) from None
    if problems.skipped:
        print(f"{source}: skipped {problems.skipped} invalid rows (--skip-invalid), first: {problems.skipped_rows[0]}")
    encoded = [
        {
            **p,
            "prompt_ids": tokenizer(build_prompt(p["question"], template, tokenizer), add_special_tokens=False)[
                "input_ids"
            ],
        }
        for p in problems
    ]
    kept = [p for p in encoded if len(p["prompt_ids"]) <= max_prompt_length]
    if len(kept) < len(encoded):
        print(
            f"{source}: skipped {len(encoded) - len(kept)} of {len(encoded)} prompts over --max-prompt-length "
            f"{max_prompt_length} tokens"
        )
    if not kept:
        raise DataError(f"{flag} {source}: no problem to train or evaluate on ({len(encoded)} loaded)".strip())
    if limit is None and len(kept) < per_step:
        print(
            f"note: {len(kept)} training problems, fewer than --prompts-per-step {per_step}: every step repeats "
            "problems (reshuffled each pass)"
        )
    return kept


def take_prompts(problems: list, pos: int, count: int, seed: int) -> list:
    """The training scripts' data order: ``count`` problems from global position ``pos`` of an endless stream that
    reshuffles the set every epoch (``torch.randperm`` seeded with seed · 1,000,003 + epoch), so a resumed run that
    knows its position continues exactly where it stopped."""
    import torch  # only the training scripts need it

    n = len(problems)
    orders = {
        epoch: torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for epoch in range(pos // n, (pos + count - 1) // n + 1)
    }
    return [problems[int(orders[i // n][i % n])] for i in range(pos, pos + count)]


def main(argv: list[str] | None = None) -> int:
    """``python -m common.data [NAMES] [--data-dir DIR] [--source URL]``: download the named sets' missing
    files into the data dir and check every file (rows, sha256). Exit status 1 if any file failed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m common.data", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"data sets (default: all): {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", help=f"where the files go (default: ${DATA_DIR_ENV}, else {default_data_dir()})")
    parser.add_argument(
        "--source",
        help="a base URL or local folder with the data dir's layout, used instead of "
        f"the pinned upstream URLs (default: ${MIRROR_ENV} if set)",
    )
    args = parser.parse_args(argv)
    names = [_ALIASES.get(n.lower(), n.lower()) for n in args.names] or list(DATASETS)
    unknown = [n for n in names if n not in _BENCHMARK_SPECS]
    if unknown:
        parser.error(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    failed = 0
    for name in dict.fromkeys(names):
        for rel in _BENCHMARK_SPECS[name][1].values():
            try:
                path = fetch_file(rel, args.data_dir, args.source)
            except (DataError, DataNotFoundError) as e:
                print(f"error: {e}", file=sys.stderr)
                failed += 1
                continue
            rows, sha256 = file_stats(path)
            print(f"ok: {path} ({rows} rows, sha256 {sha256})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
