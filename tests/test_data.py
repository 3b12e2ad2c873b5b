"""Tests for common/data.py: real benchmark loaders (counts and documented oddities), bad-row handling,
local files, data-dir resolution, fetching into the data dir and checking the pinned files, DAPO
deduplication, the arith testbed task and the prompt templates."""

import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA_DIR, needs_data

from common import reward
from common.data import (
    BENCHMARKS,
    DAPO_INSTRUCTION,
    DATA_FILES,
    DATASETS,
    QWEN_MATH_SYSTEM,
    DataError,
    DataNotFoundError,
    Problems,
    build_prompt,
    check_source,
    default_data_dir,
    fetch_file,
    file_stats,
    last_boxed,
    load_problems,
    load_prompts,
    make_arith_problems,
    repair_control_chars,
    resolve_data_dir,
    take_prompts,
)

REPO = Path(__file__).resolve().parents[1]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # any control character except newline


@lru_cache(maxsize=None)
def load(name, split=None):
    """Each real file is parsed once per session (DAPO takes ~2 s)."""
    return load_problems(name, split=split, data_dir=str(DATA_DIR), skip_invalid=(name == "math_train"))


def raw_jsonl(rel):
    return [json.loads(line) for line in open(DATA_DIR / rel, encoding="utf-8")]


# ---------------------------------------------------------------------------------------------
# Real data: counts and oddities
# ---------------------------------------------------------------------------------------------

COUNTS = [
    ("aime24", None, 30),
    ("aime25", None, 30),
    ("amc23", None, 40),
    ("math500", None, 500),
    ("minerva_math", None, 272),
    ("olympiadbench", None, 675),
    ("gsm8k", "train", 7473),
    ("gsm8k", "test", 1319),
    ("dapo_math_17k", None, 17257),
    ("math_train", None, 7498),
]  # DAPO: 17,398 rows, of which 141 repeat an earlier row's question and gold


@needs_data
@pytest.mark.parametrize("name,split,count", COUNTS)
def test_counts_and_record_shape(name, split, count):
    problems = load(name, split)
    assert isinstance(problems, Problems) and isinstance(problems, list)
    assert len(problems) == count
    assert problems.skipped == (2 if name == "math_train" else 0)
    assert problems.duplicates == (141 if name == "dapo_math_17k" else 0)
    for p in problems:
        assert isinstance(p["id"], str) and p["source"] == name
        assert isinstance(p["question"], str) and p["question"].strip() == p["question"] != ""
        assert isinstance(p["answer"], str) and p["answer"].strip() == p["answer"] != ""
        assert not CONTROL.search(p["question"]), (name, p["id"])
    assert len({p["id"] for p in problems}) == count  # ids are unique


@needs_data
def test_default_split_and_aliases():
    assert len(load("gsm8k")) == 1319  # default split is test
    assert load_problems("dapo", data_dir=str(DATA_DIR), limit=3) == load("dapo_math_17k")[:3]
    with pytest.raises(DataError, match="splits"):
        load_problems("aime24", split="train", data_dir=str(DATA_DIR))


@needs_data
def test_math_train_empty_golds():
    with pytest.raises(ValueError) as err:
        load_problems("math_train", data_dir=str(DATA_DIR))
    message = str(err.value)
    assert "math_train/train.parquet" in message and "row 5341 (0-based)" in message
    assert "reward_model.ground_truth" in message and "empty" in message
    problems = load("math_train")
    assert problems.skipped == 2 and len(problems.skipped_rows) == 2
    assert "row 5343" in problems.skipped_rows[1]
    suffix = "Let's think step by step and output the final answer within"
    assert not any(suffix in p["question"] for p in problems)
    assert sum(p["level"] in ("Level 3", "Level 4", "Level 5") for p in problems) == 5586 - 2


@needs_data
def test_aime25_control_char_repair():
    problems = {p["id"]: p for p in load("aime25")}
    assert problems["18"]["question"].count("\\frac{\\log") == 5
    assert "$\\frac{m}{n}$" in problems["27"]["question"]
    assert "circumcircle of $\\triangle DEF$" in problems["19"]["question"]
    for p in problems.values():
        assert not re.search(r"[\x00-\x1f]", p["question"].replace("\n", "")), p["id"]
    assert [problems[str(i)]["answer"] for i in range(3)] == ["70", "588", "16"]


@needs_data
def test_aime24_and_math500_golds_kept_verbatim():
    assert [p["answer"] for p in load("aime24")][7] == "025"  # zero-padded: compare as numbers downstream
    math500 = load("math500")
    assert (
        math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
        and math500[0]["id"] == "test/precalculus/807.json"
    )
    assert all(last_boxed(r["solution"]) == p["answer"] for r, p in zip(raw_jsonl("math500/test.jsonl"), math500))


@needs_data
def test_amc23_float_golds():
    golds = [p["answer"] for p in load("amc23")]
    assert golds[0] == "27" and "-1" in golds
    assert not any(g.endswith(".0") for g in golds)


@needs_data
def test_gsm8k_thousands_separators():
    raw = raw_jsonl("gsm8k/train.jsonl") + raw_jsonl("gsm8k/test.jsonl")
    loaded = list(load("gsm8k", "train")) + list(load("gsm8k", "test"))
    finals = [r["answer"].split("####")[-1].strip() for r in raw]
    with_commas = [(f, p["answer"]) for f, p in zip(finals, loaded) if "," in f]
    assert len(with_commas) == 93
    assert ("2,125", "2125") in with_commas and ("1,450,000", "1450000") in with_commas
    assert all(re.fullmatch(r"-?\d+", p["answer"]) for p in loaded)


@needs_data
def test_olympiadbench_golds_and_extras():
    problems = load("olympiadbench")
    raw = raw_jsonl("olympiadbench/test.jsonl")
    by_raw = {r["final_answer"][0]: p for r, p in zip(raw, problems)}
    assert by_raw["$69$,$84$"]["answer"] == "69,84"
    assert by_raw["$2^{1009}$"]["answer"] == "2^{1009}"
    assert by_raw["$(-\\infty, 0) \\cup\\{1\\}$."]["answer"] == "(-\\infty, 0) \\cup\\{1\\}"
    assert by_raw["$-1$,$2$,$-2$"]["answer"] == "-1,2,-2"
    assert not any("$" in p["answer"] or p["answer"].endswith(".") for p in problems)
    assert sum(p["is_multiple_answer"] for p in problems) == 94
    with_error = [p for p in problems if p["error"]]
    assert len(with_error) == 1 and with_error[0]["error"] == "1e-1" and with_error[0]["unit"] == "%"
    assert sum(p["unit"] is not None for p in problems) == 8
    assert {p["answer_type"] for p in problems} == {"Numerical", "Expression", "Tuple", "Interval"}


@needs_data
def test_minerva_nested_brace_gold():
    golds = [p["answer"] for p in load("minerva_math")]
    assert golds[0] == "1.6"
    planck = "\\frac{2 \\pi c^{2} R^{2}}{\\lambda^{5}\\left[e^{h c /(\\lambda k T)}-1\\right] d^{2}}"
    assert planck in golds
    assert all(g.count("{") == g.count("}") for g in golds)


@needs_data
def test_dapo_templates_removed():
    problems = load("dapo_math_17k")
    leftovers = (
        "Solve the following math problem step by step",
        "Remember to put your answer",
        "让我们一步一步地思考",
        "Answer: \\boxed{<final_answer>}",
        "不带任何标点或空格",
    )
    for p in problems:
        assert not any(s in p["question"] for s in leftovers), p["id"]
        assert re.fullmatch(r"-?\d+", p["answer"])
    chinese = [p for p in problems if re.search(r"[\u4e00-\u9fff]", p["question"])]
    assert len(chinese) == 3213  # the 3,282 Chinese-template rows less 69 that repeat an earlier row
    assert problems[0]["id"] == "9a9b6eb4-a1cb-49d1-8c1e-62eaf2f74079" and problems[0]["answer"] == "34"
    assert problems[0]["question"].startswith("In triangle $ABC$, $\\sin \\angle A = \\frac{4}{5}$")
    # escape damage repaired ("\x0crac" -> "\frac" in ~600 rows); ligature codes are covered by the CONTROL check
    assert sum("in the form \\frac{m}{n}" in p["question"] for p in problems) >= 600
    assert not any(re.search(r"(?<![a-z])rac\{", p["question"]) for p in problems)


# ---------------------------------------------------------------------------------------------
# Bad rows, local files, resolution (small temp files; no benchmark data needed)
# ---------------------------------------------------------------------------------------------


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


BAD_JSONL = [
    ({"question": "q"}, "answer", "missing"),
    ({"problem": "q", "answer": "  "}, "answer", "empty gold"),
    ({"problem": "q", "answer": {"value": 3}}, "answer", "dict"),
    ({"answer": "3", "other": "x"}, "problem", "missing"),
    ('{"problem": "q", "answer": "1"', "<json>", "malformed JSON"),
]


@pytest.mark.parametrize("bad,field,reason", BAD_JSONL)
def test_bad_jsonl_row_names_file_line_field(tmp_path, bad, field, reason):
    path = write_jsonl(tmp_path / "probs.jsonl", [{"problem": "1+1?", "answer": "2"}, bad])
    with pytest.raises(ValueError) as err:
        load_problems(str(path))
    message = str(err.value)
    assert str(path) in message and "line 2" in message and field in message and reason in message
    assert "rerun with --skip-invalid" in message and "skip_invalid=" not in message
    problems = load_problems(str(path), skip_invalid=True)
    assert len(problems) == 1 and problems.skipped == 1 and "line 2" in problems.skipped_rows[0]


def test_skip_invalid_counts_all_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "probs.jsonl", [{"problem": "ok", "answer": 5}, "", *[b for b, _, _ in BAD_JSONL]])
    problems = load_problems(str(path), skip_invalid=True)
    assert problems == [{"id": "0", "question": "ok", "answer": "5", "source": str(path)}]
    assert problems.skipped == len(BAD_JSONL)
    assert [s.split(": ")[0].rsplit(":", 1)[1] for s in problems.skipped_rows] == [
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
    ]


def test_bad_parquet_rows(tmp_path):
    path = tmp_path / "probs.parquet"
    table = pa.table(
        {
            "problem": ["a?", "b?", "c?", None],
            "reward_model": [
                {"ground_truth": "1"},
                {"ground_truth": ""},
                {"ground_truth": None},
                {"ground_truth": "4"},
            ],
        }
    )
    pq.write_table(table, path)
    with pytest.raises(ValueError) as err:
        load_problems(str(path))
    assert str(path) in str(err.value) and "row 1 (0-based)" in str(err.value)
    assert "reward_model.ground_truth" in str(err.value)
    problems = load_problems(str(path), skip_invalid=True)
    assert [p["answer"] for p in problems] == ["1"] and problems.skipped == 3
    assert "row 3 (0-based): problem" in problems.skipped_rows[2]


def test_generic_files_fields_and_formats(tmp_path):
    rows = [{"idx": 7, "meta": {"q": "What is 2+2?", "gold": 4.0}, "solution": "so \\boxed{\\frac{1}{2}}"}]
    jsonl = write_jsonl(tmp_path / "custom.jsonl", rows)
    p = load_problems(str(jsonl), question_field="meta.q", answer_field="meta.gold")
    assert p == [{"id": "7", "question": "What is 2+2?", "answer": "4", "source": str(jsonl)}]
    (tmp_path / "custom.json").write_text(
        json.dumps([{"question": "x?", "solution": "a \\boxed{1} b \\boxed{\\frac{1}{2}}"}])
    )
    assert load_problems(str(tmp_path / "custom.json"))[0]["answer"] == "\\frac{1}{2}"
    write_jsonl(tmp_path / "fa.jsonl", [{"question": "y?", "final_answer": ["$3$,$4$"]}])
    assert load_problems(str(tmp_path / "fa.jsonl"))[0]["answer"] == "3,4"
    many = write_jsonl(tmp_path / "many.jsonl", [{"problem": f"p{i}", "answer": str(i)} for i in range(10)])
    assert [p["answer"] for p in load_problems(str(many), limit=3)] == ["0", "1", "2"]
    assert load_problems(str(many), limit=0) == []
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n  \n"),
        ("empty.json", b""),
        ("array.json", b"[]"),
        ("empty.parquet", b""),
        ("no_rows.parquet", None),
    ],
)
def test_empty_file_is_an_error_naming_it(tmp_path, name, content):
    """An empty training or evaluation file is said to be empty (not "no prompt fits in --max-prompt-length"
    later on), whatever the limit."""
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), path)
    else:
        path.write_bytes(content)
    for kwargs in ({}, {"skip_invalid": True}, {"limit": 0}):
        with pytest.raises(DataError) as err:
            load_problems(str(path), **kwargs)
        assert str(err.value) == f"{path}: the file is empty: no rows to load"


@pytest.mark.parametrize(
    "line, message, column",
    [
        ('{"problem": "what is 1+1?", "answer": "2"', "Expecting ',' delimiter", 42),  # cut short: just after its end
        ('{"problem": "what is 1+1?", "answer": }', "Expecting value", 39),
        ('{"problem": "q", "answer": "1"} {"x": 1}', "Extra data", 33),
    ],
)
def test_malformed_jsonl_line_names_its_line_and_column(tmp_path, line, message, column):
    """The real column of the error in the file's line (a row cut short was reported at "column 1", the
    position after its newline)."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"problem": "q", "answer": "1"}\n\n' + line + "\n")
    with pytest.raises(DataError) as err:
        load_problems(str(path))
    assert str(err.value).startswith(f"{path}:line 3: <json>: malformed JSON ({message} at line 3, column {column})")
    skipped = load_problems(str(path), skip_invalid=True)
    assert len(skipped) == 1 and skipped.skipped_rows == [
        f"{path}:line 3: <json>: malformed JSON ({message} at line 3, column {column})"
    ]


def test_unreadable_json_and_parquet_files_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('[{"problem": "q", "answer": "1"},')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON \(.* at line 1, column \d+\)"):
        load_problems(str(tmp_path / "bad.json"))
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError) as err:
        load_problems(str(tmp_path / "bad.parquet"))
    assert str(err.value).startswith(f"{tmp_path / 'bad.parquet'}: not a readable parquet file (")
    assert "\n" not in str(err.value)


def test_known_benchmark_file_path_gets_its_rules(tmp_path):
    bench = tmp_path / "olympiadbench"
    bench.mkdir()
    row = {
        "id": 1,
        "question": "Q?",
        "final_answer": ["$69$,$84$"],
        "unit": None,
        "error": None,
        "is_multiple_answer": True,
        "answer_type": "Numerical",
        "context": None,
    }
    write_jsonl(bench / "test.jsonl", [row])
    (p,) = load_problems(str(bench / "test.jsonl"))
    assert p["answer"] == "69,84" and p["source"] == "olympiadbench" and p["is_multiple_answer"] is True
    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    write_jsonl(gsm / "train.jsonl", [{"question": "Q", "answer": "work <<1+1=2>>\n#### 1,000"}])
    assert load_problems(str(gsm / "train.jsonl"))[0]["answer"] == "1000"


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "rlvr-entropy" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == Path.home() / ".cache" / "rlvr-entropy" / "data"
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path and resolve_data_dir("/elsewhere") == Path("/elsewhere")
    monkeypatch.delenv("RLVR_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "rlvr-entropy" / "data"  # the cache; nothing else is looked at


def test_unknown_names_and_missing_files_fail_before_loading(tmp_path):
    for name in ("aime2024", "math-5000", "gsm8k test"):
        with pytest.raises(DataError, match=f"unknown data set '{name}'.*aime24.*owner/name"):
            load_problems(name)
    with pytest.raises(DataNotFoundError, match="no such file"):
        check_source(str(tmp_path / "nope.parquet"))
    with pytest.raises(DataNotFoundError, match="a directory, not a data file"):
        check_source(str(tmp_path))
    with pytest.raises(DataNotFoundError, match="no such file"):
        check_source(f"json:{tmp_path / 'x.jsonl'}")
    for ok in ("aime24", "DAPO", "arith", "BytedTsinghua-SIA/DAPO-Math-17k"):
        check_source(ok)


# ---------------------------------------------------------------------------------------------
# Pinned files: fetch into the data dir, checksums, offline errors (real files as the source)
# ---------------------------------------------------------------------------------------------


@needs_data
def test_manifest_pins_exactly_the_real_files():
    on_disk = {str(p.relative_to(DATA_DIR)) for p in DATA_DIR.glob("*/*") if p.suffix in (".jsonl", ".parquet")}
    assert set(DATA_FILES) == on_disk
    assert {rel.split("/")[0] for rel in DATA_FILES} == set(DATASETS)
    for rel, (url, rows, sha256) in DATA_FILES.items():
        assert file_stats(DATA_DIR / rel) == (rows, sha256), rel
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", url), url
        assert url.rsplit("/", 1)[1] == rel.rsplit("/", 1)[1], url


@needs_data
@pytest.mark.parametrize("as_url", [True, False])
def test_fetch_into_an_empty_data_dir_then_load(tmp_path, capsys, as_url):
    source = DATA_DIR.as_uri() if as_url else str(DATA_DIR)
    cache = tmp_path / "cache"
    for rel in ("aime24/test.jsonl", "math_train/train.parquet"):
        path = fetch_file(rel, cache, source=source)
        assert path == cache / rel and path.read_bytes() == (DATA_DIR / rel).read_bytes()
        assert f"downloaded {source if as_url else DATA_DIR.as_uri()}/{rel} -> {path}" in capsys.readouterr().err
    assert sorted(p.name for p in cache.rglob("*")) == [
        "aime24",
        "math_train",
        "test.jsonl",
        "train.parquet",
    ]  # no .part
    mtime = (cache / "aime24/test.jsonl").stat().st_mtime_ns
    problems = load_problems("aime24", data_dir=str(cache))  # present: checked, not downloaded again
    assert len(problems) == 30 and problems[0]["answer"] == "204" and capsys.readouterr().err == ""
    assert (cache / "aime24/test.jsonl").stat().st_mtime_ns == mtime


@needs_data
def test_mirror_env_is_used_for_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_DATA_MIRROR", DATA_DIR.as_uri())
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path / "d"))
    assert [p["answer"] for p in load_problems("amc23")][:2] == ["27", "36"]
    assert (tmp_path / "d" / "amc23" / "test.jsonl").is_file()


@needs_data
def test_corrupted_copy_fails_the_checksum(tmp_path):
    (tmp_path / "aime24").mkdir()
    lines = (DATA_DIR / "aime24/test.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "aime24/test.jsonl").write_bytes(b"".join(lines[:-1]))  # one problem lost
    with pytest.raises(DataError) as err:
        load_problems("aime24", data_dir=str(tmp_path))
    message = str(err.value)
    _, rows, sha256 = DATA_FILES["aime24/test.jsonl"]
    assert str(tmp_path / "aime24/test.jsonl") in message and "not the pinned aime24/test.jsonl" in message
    assert f"expected 30 rows, sha256 {sha256}" in message and "got 29 rows, sha256 " in message
    assert "delete it to download it again" in message
    # same row count, one changed byte: the checksum alone catches it
    data = bytearray((DATA_DIR / "aime24/test.jsonl").read_bytes())
    data[data.index(b'"answer"') + 11] ^= 1
    (tmp_path / "aime24/test.jsonl").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"expected 30 rows, sha256 \w+; got 30 rows, sha256 \w+"):
        load_problems("aime24", data_dir=str(tmp_path))
    # a corrupted parquet (truncated): rows unreadable, named as such
    (tmp_path / "math_train").mkdir()
    (tmp_path / "math_train/train.parquet").write_bytes((DATA_DIR / "math_train/train.parquet").read_bytes()[:-100])
    with pytest.raises(DataError, match="expected 7500 rows, sha256 7aadb17b.*; got None rows"):
        load_problems("math_train", data_dir=str(tmp_path))


@needs_data
def test_corrupted_download_is_rejected_and_not_kept(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(DATA_DIR / "gsm8k", mirror / "gsm8k")
    with open(mirror / "gsm8k/test.jsonl", "ab") as f:
        f.write(b'{"question": "extra", "answer": "#### 1"}\n')
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch_file("gsm8k/test.jsonl", cache, str(mirror))
    message = str(err.value)
    assert f"the download from {mirror.as_uri()}/gsm8k/test.jsonl: not the pinned gsm8k/test.jsonl" in message
    assert "expected 1319 rows" in message and "got 1320 rows" in message
    assert not cache.joinpath("gsm8k").exists() or not any(cache.joinpath("gsm8k").iterdir())
    assert fetch_file("gsm8k/train.jsonl", cache, str(mirror)).is_file()  # the intact file is fine


def test_missing_and_not_downloadable_names_the_flag_env_var_and_file(tmp_path):
    empty_mirror = tmp_path / "offline"  # stands in for an unreachable source: nothing there
    empty_mirror.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        fetch_file("olympiadbench/test.jsonl", tmp_path / "data", source=str(empty_mirror))
    message = str(err.value)
    assert "data set 'olympiadbench' needs olympiadbench/test.jsonl" in message
    assert f"not in the data dir {tmp_path / 'data'}" in message and "--data-dir" in message
    assert "RLVR_DATA_DIR" in message and "data_dir=" not in message and "\n" not in message
    assert f"{empty_mirror.as_uri()}/olympiadbench/test.jsonl" in message
    assert not (tmp_path / "data" / "olympiadbench").exists()


@needs_data
def test_fetch_command_line(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "common.data", "aime25", "gsm8k", "--data-dir", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--source", str(DATA_DIR)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.count("ok: ") == 3
        and f"ok: {tmp_path / 'gsm8k/train.jsonl'} (7473 rows, sha256 17f347dc" in proc.stdout
    )
    (tmp_path / "aime25/test.jsonl").write_text("{}\n")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout.count("ok: ") == 2
    assert proc.stderr.startswith(f"error: {tmp_path / 'aime25/test.jsonl'}: not the pinned aime25/test.jsonl")


# ---------------------------------------------------------------------------------------------
# DAPO-Math-17k deduplication (the hub original repeats every problem ~100 times)
# ---------------------------------------------------------------------------------------------


@needs_data
def test_hub_layout_of_dapo_is_deduplicated(tmp_path, capsys):
    """Real DAPO rows, re-wrapped in the hub original's "Answer:" template and each repeated 3 times in
    the hub's file name, load as the unique problems; the dropped rows are counted and printed."""
    rows = pq.read_table(DATA_DIR / "dapo_math_17k/DAPO-Math-17k.parquet").slice(0, 50).to_pylist()
    expected = load_problems("dapo_math_17k", data_dir=str(DATA_DIR), limit=50)
    hub_rows = []
    for row, problem in zip(rows, expected):
        content = DAPO_INSTRUCTION.format(question=problem["question"])
        hub_rows.append({**row, "prompt": [{"role": "user", "content": content}]})
    path = tmp_path / "dapo-math-17k.parquet"
    pq.write_table(pa.Table.from_pylist(hub_rows * 3), path)
    capsys.readouterr()
    problems = load_problems(str(path))
    assert [(p["question"], p["answer"]) for p in problems] == [(p["question"], p["answer"]) for p in expected]
    assert problems.duplicates == 100 and problems[0]["source"] == "dapo_math_17k"
    assert (
        "note: dapo_math_17k: dropped 100 duplicate rows (same question and gold answer), kept 50 problems"
        in capsys.readouterr().out
    )
    assert len(load_problems(str(path), limit=7)) == 7


def test_datasets_builder_source(tmp_path, monkeypatch):
    """``json:<path>`` goes through datasets.load_dataset (offline); the hub path shares this code."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # keep ~/.cache clean
    path = write_jsonl(tmp_path / "hf.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": ""}])
    with pytest.raises(ValueError, match=r"row 1 \(0-based\): answer: empty gold"):
        load_problems(f"json:{path}")
    problems = load_problems(f"json:{path}", skip_invalid=True)
    assert [p["answer"] for p in problems] == ["1"] and problems.skipped == 1


def test_repair_control_chars():
    assert (
        repair_control_chars("$\x0crac{m}{n}$ and $\triangle ABC$ and \x08eta")
        == "$\\frac{m}{n}$ and $\\triangle ABC$ and \\beta"
    )
    assert (
        repair_control_chars("$\\left(x\right)$ $2\times 3$ $\nabla f$")
        == "$\\left(x\\right)$ $2\\times 3$ $\\nabla f$"
    )
    assert (
        repair_control_chars("fi\x0cve, the \x0cfirst, \x0cnd, de\x0cne, di\x0bfference")
        == "five, the first, find, define, difference"
    )
    assert repair_control_chars("a\x0c\x0cand $x\x14 \\le$\x88") == "aand $x \\le$"
    untouched = "Line one.\nLet $u$ be\tequal\n\ni) for\nu=1; mid\nmid[i]\treturn"
    assert repair_control_chars(untouched) == untouched


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{1} then \\boxed{\\frac{a}{b^{2}}} end", "\\frac{a}{b^{2}}"),  # the last box, nested braces
        ("so \\boxed{\\{1, \\{2\\}\\}}.", "\\{1, \\{2\\}\\}"),  # escaped braces do not count
        ("\\fbox{3}", "3"),  # \\fbox as well as \\boxed
        ("\\boxed{1} and \\fbox{2}", "2"),
        ("\\boxed 3", "3"),  # the space form
        ("$\\boxed 3$", "3"),
        ("\\boxed {x}", "x"),
        ("\\boxed{ 7 }", "7"),
        ("no box here", None),
        ("\\boxed{}", None),  # empty
        ("\\boxed{1} then \\boxed{open", None),  # an unclosed last box (a truncated solution) is no answer
        ("\\boxedx{1}", None),  # another command
    ],
)
def test_last_boxed(text, expected):
    """One box reader for gold solutions (``common.data``) and model answers (``common.reward``)."""
    assert last_boxed is reward.last_boxed
    assert last_boxed(text) == expected
    assert reward.extract_answer(text, "boxed") == expected


def test_gold_from_a_solution_box(tmp_path):
    path = tmp_path / "s.jsonl"
    rows = [{"problem": "a", "solution": "so \\fbox{3}"}, {"problem": "b", "solution": "\\boxed{\\frac{1}{2}}."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p["answer"] for p in load_problems(str(path))] == ["3", "\\frac{1}{2}"]
    path.write_text(json.dumps({"problem": "c", "solution": "no box"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: solution: no \\boxed\{"):
        load_problems(str(path))


# ---------------------------------------------------------------------------------------------
# Synthetic arith task and templates
# ---------------------------------------------------------------------------------------------


def test_arith_splits_deterministic_and_disjoint():
    train = load_problems("arith", limit=300)
    test = load_problems("arith", split="test", limit=300)
    assert train == load_problems("arith", split="train", limit=300) == make_arith_problems(300, "train", seed=0)
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert all(p["source"] == "arith" and p["solution"].endswith(f"\\boxed{{{p['answer']}}}") for p in train)
    assert len(load_problems("arith", split="test")) == 500


def test_templates():
    assert build_prompt("What is 1+1?", "plain") == "Q: What is 1+1?\nA: "
    chatml = build_prompt("What is 1+1?", "qwen-math")
    assert chatml == (
        f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    dapo = build_prompt("What is 1+1?", "dapo")
    assert DAPO_INSTRUCTION.format(question="What is 1+1?") in dapo and 'after "Answer:".' in dapo
    assert "Solve the following math problem step by step." in dapo and dapo.startswith("<|im_start|>user\n")
    with pytest.raises(ValueError, match="unknown template"):
        build_prompt("x", "r1")


def test_templates_with_chat_template_tokenizer():
    model_dir = Path(__file__).resolve().parents[1] / "testbed" / "model"
    if model_dir.is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:  # a tiny in-memory tokenizer: only the Jinja chat template matters here
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        )
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    prompt = build_prompt("What is 1+1?", "qwen-math", tokenizer)
    assert prompt == f"[system]{QWEN_MATH_SYSTEM}\n[user]What is 1+1?\n[assistant]"
    assert build_prompt("Q", "dapo", tokenizer) == f"[user]{DAPO_INSTRUCTION.format(question='Q')}\n[assistant]"
    assert build_prompt("Q", "plain", tokenizer) == "Q: Q\nA: "


def test_load_prompts_tokenizes_skips_long_prompts_and_fails_with_a_data_error(tmp_path, capsys):
    """The training scripts' loader, with the testbed's real tokenizer: each record gets the tokenized `plain`
    prompt; prompts over the limit are skipped and counted; nothing left, or a missing file, is a DataError."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "testbed" / "model")
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in ("1+0?", "0+1? " * 40, "2-1?")))
    problems = load_prompts(str(path), None, tokenizer, "plain", max_prompt_length=20, per_step=4)
    assert [p["question"] for p in problems] == ["1+0?", "2-1?"]
    assert problems[0]["prompt_ids"] == tokenizer("Q: 1+0?\nA: ", add_special_tokens=False)["input_ids"]
    out = capsys.readouterr().out
    assert f"{path}: skipped 1 of 3 prompts over --max-prompt-length 20 tokens" in out
    assert "note: 2 training problems, fewer than --prompts-per-step 4" in out
    assert len(load_prompts(str(path), None, tokenizer, "plain", 20, limit=1, per_step=4)) == 1
    assert "note:" not in capsys.readouterr().out  # an evaluation set (a limit) is not a training batch
    with pytest.raises(DataError, match=r"no problem to train or evaluate on \(3 loaded\)"):
        load_prompts(str(path), None, tokenizer, "plain", max_prompt_length=2)
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_prompts(str(tmp_path / "nope.jsonl"), None, tokenizer, "plain", 20)
    with pytest.raises(DataError, match="^--eval-data .*nope.jsonl: no such file"):  # the message names the flag
        load_prompts(str(tmp_path / "nope.jsonl"), None, tokenizer, "plain", 20, flag="--eval-data")


def test_take_prompts_is_an_endless_reshuffled_stream_resumable_at_any_position():
    problems = list(range(10))
    stream = take_prompts(problems, 0, 35, seed=3)
    for epoch in range(3):  # every epoch is a permutation of the set, and the epochs differ
        assert sorted(stream[10 * epoch : 10 * epoch + 10]) == problems
    assert stream[:10] != stream[10:20] != stream[20:30]
    assert take_prompts(problems, 7, 16, seed=3) == stream[7:23]  # from any position: the same problems
    assert take_prompts(problems, 0, 10, seed=4) != stream[:10]
    assert take_prompts(problems[:1], 5, 3, seed=3) == [0, 0, 0]


def test_benchmarks_tuple():
    assert BENCHMARKS == ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench")
