"""benchmarks/keyed_noise_study.py: the table of paired SDs, keyed against stream noise, from four runs files."""

import json
import statistics

from benchmarks import keyed_noise_study as study


def write_runs(path, arm_evals, base_evals):
    path.mkdir(parents=True)
    rows = []
    for seed, (arm, base) in enumerate(zip(arm_evals, base_evals), start=1):
        for role, value in (("arm", arm), ("baseline", base)):
            rows.append(
                {"role": role, "seed": seed, "eval_final": value, "entropy_mean": 0.1, "forking_entropy": 0.5 + value}
            )
    (path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_gives_the_paired_sd_of_each_noise_and_their_ratio(tmp_path):
    base = [0.5, 0.6, 0.55, 0.7, 0.65, 0.5, 0.6, 0.62]
    wide = [0.10, -0.08, 0.12, -0.10, 0.05, -0.04, 0.09, -0.11]  # stream: differences spread widely
    narrow = [d / 4 for d in wide]  # keyed: a quarter of the spread
    for arm in ("opefo", "steer"):
        write_runs(tmp_path / f"{arm}-stream", [b + d for b, d in zip(base, wide)], base)
        write_runs(tmp_path / f"{arm}-keyed", [b + d for b, d in zip(base, narrow)], base)
    text = study.table(tmp_path)
    sd = statistics.stdev(wide)
    row = next(line for line in text.splitlines() if line.startswith("| opefo | final eval"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{100 * sd:.1f}" and cells[3] == f"{100 * sd / 4:.1f}"
    assert cells[4].startswith("0.25 [0.11, 0.56]")  # 0.25 × (1/√4.99, √4.99)
    n_stream = -(-((2.8 * sd / 0.05) ** 2) // 1)
    assert cells[5].startswith(f"Δ = 5: {int(n_stream)} → ")
    mean_entropy = next(line for line in text.splitlines() if line.startswith("| steer | mean entropy"))
    assert "0.0000 | 0.0000" in mean_entropy  # no spread at all: both SDs 0 (ratio inf, printed, not a crash)


def test_table_names_a_missing_comparison(tmp_path):
    assert study.table(tmp_path).startswith(f"missing: {tmp_path / 'opefo-stream' / 'runs.jsonl'}")


def test_the_four_comparisons_reuse_the_grpo_runs_within_each_noise(tmp_path):
    runs = dict(study.comparisons(tmp_path))
    assert list(runs) == ["opefo-stream", "steer-stream", "opefo-keyed", "steer-keyed"]
    assert runs["steer-keyed"][runs["steer-keyed"].index("--reuse-baseline") + 1] == str(tmp_path / "opefo-keyed")
    assert runs["opefo-keyed"][-3:] == ["--", "--sampling-noise", "keyed"]
