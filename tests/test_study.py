"""benchmarks/study.py, the third study: the learning-rate bracketing rule, the registered arms and comparisons, the
family-wide Holm correction, and the committed report (docs/study3.md equals the report of the committed runs
files)."""

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import study  # noqa: E402


def bracket_rows(scores: dict, regime: str = "strict") -> list[dict]:
    """Rows of the bracketing runs file: {rate: [eval per seed]}."""
    return [
        {"role": study.rate_role(regime, rate), "seed": seed, "eval_final": value, "discovery_step": 50.0}
        for rate, values in scores.items()
        for seed, value in zip(study.BRACKET_SEEDS, values)
    ]


def test_the_bracketing_extends_the_grid_until_the_best_rate_has_two_worse_neighbours():
    start = study.BRACKET_START["strict"]
    assert study.next_rates([], "strict") == [start / 2, start, start * 2]
    rows = study.with_rates(bracket_rows({start / 2: [0.3, 0.3], start: [0.4, 0.4], start * 2: [0.5, 0.5]}))
    assert study.bracket_state(rows, "strict")[1:] == (start * 2, False)  # best at the top edge: not bracketed
    assert study.next_rates(rows, "strict") == [start * 4]
    rows += study.with_rates(bracket_rows({start * 4: [0.45, 0.5]}))
    assert study.bracket_state(rows, "strict") == ([start / 2, start, start * 2, start * 4], start * 2, True)
    assert study.next_rates(rows, "strict") == []
    half = study.with_rates(bracket_rows({start * 8: [0.9]}))  # a rate counts once every bracketing seed has run
    assert study.bracket_state(rows + half, "strict")[1] == start * 2
    low = study.with_rates(bracket_rows({start / 2: [0.5, 0.5], start: [0.4, 0.4], start * 2: [0.3, 0.3]}))
    assert study.next_rates(low, "strict") == [start / 4]  # best at the bottom edge
    tie = study.with_rates(bracket_rows({start / 2: [0.3, 0.3], start: [0.5, 0.5], start * 2: [0.4, 0.6]}))
    assert study.bracket_state(tie, "strict")[1:] == (start, False)  # tied with its higher neighbour: not bracketed
    assert study.next_rates(tie, "strict") == [start * 4]  # the grid grows upwards (a rate not run yet)
    capped = study.with_rates(bracket_rows({start * 2**k: [0.1 * k, 0.1 * k] for k in range(study.BRACKET_MAX_RATES)}))
    assert study.next_rates(capped, "strict") == []  # at the limit: the best is used, reported as not bracketed
    with pytest.raises(SystemExit, match="not bracketed"):
        study.chosen_rates(rows)  # the other regimes have not run
    others = [r | {"regime": g} for g in ("mb8", "mb16") for r in rows]
    assert study.chosen_rates(rows + others) == {"strict": start * 2, "mb8": start * 2, "mb16": start * 2}


def test_registered_arms_and_comparisons():
    assert not set(study.BRACKET_SEEDS) & set(study.SEEDS) and len(study.SEEDS) >= 12
    assert {a for pair in study.COMPARISONS for a in pair} == set(study.ARMS)
    for arm, base in study.COMPARISONS:
        assert study.ARMS[arm][0] == study.ARMS[base][0]  # compared within one regime, at its learning rate
    jobs = study.compare_jobs([1, 2])
    assert jobs[:6] == [
        ("grpo-strict", 1),
        ("opefo", 1),
        ("grpo-strict", 2),
        ("opefo", 2),
        ("pos-weight", 1),
        ("pos-weight", 2),
    ]
    assert len(jobs) == len(study.ARMS) * 2 and study.compare_jobs([1], only=["steer"]) == [("steer", 1)]
    flags = study.arm_flags("steer", 5e-5)
    assert flags[-2:] == ["--learning-rate", "5e-05"] and "--num-minibatches" in flags and "graded" in flags
    for name, (_, script, _) in study.ARMS.items():  # every arm's flags parse in its script
        module = importlib.import_module(Path(script).stem)
        args = module.parse_command_line(study.arm_flags(name, 1e-4)[2:], module.Args())
        assert args.train_data == "graded" and args.learning_rate == 1e-4 and args.total_steps == study.STEPS


def test_holm_runs_over_the_whole_family_and_an_unfinished_comparison_counts_as_p_1():
    rows = []
    for seed in study.SEEDS:
        for role, value in (("grpo-strict", 0.40), ("opefo", 0.50 + 0.001 * seed)):
            rows.append(
                {"role": role, "seed": seed, "eval_final": value, "entropy_mean": 0.1, "forking_entropy": 0.5}
                | {"discovery_step": 60.0, "families_discovered": 3}
            )
    results = study.family_results(rows)
    assert len(results) == len(study.COMPARISONS) * len(study.STUDY_OUTCOMES)
    opefo_eval = next(r for r in results if r["arm"] == "opefo" and r["key"] == "eval_final")
    assert opefo_eval["p"] < 1e-6 and opefo_eval["holm"] == pytest.approx(min(1, len(results) * opefo_eval["p"]))
    assert study.claim_verdict(opefo_eval) == "supported"
    steer = next(r for r in results if r["arm"] == "steer")
    assert steer["holm"] is None and study.claim_verdict(steer) == "unfinished (0 of 12 seeds)"


def test_variance_figures_and_a_run_config_that_covers_the_inputs():
    rows = [{"eval_final": e, "families_discovered": f} for e, f in ((0.5, 2), (0.6, 3), (0.7, 4))]
    figures = study.variance_figures(rows, "families_discovered")
    assert figures["sd"] == pytest.approx(10.0) and figures["r2"] == pytest.approx(1.0)
    same = [{"eval_final": e, "discovery_step": None} for e in (0.5, 0.6)]
    assert study.variance_figures(same, "discovered")["r2"] is None  # no run discovered: nothing to explain
    config = study.plan_entry("grpo.py", ["--seed", "1"])["config"]
    assert set(config) == {"script", "script_sha256", "inputs_sha256", "flags"} and len(config["inputs_sha256"]) == 16


def test_seed_sizing_inverts_the_t_test_it_sizes_for():
    for df, alpha in ((11, 0.05), (11, 0.05 / 24), (3, 0.01)):
        t = study.t_quantile(df, alpha)
        assert study.regularized_beta(df / 2, 0.5, df / (df + t * t)) == pytest.approx(alpha, rel=1e-6)  # t-test p
    assert study.t_quantile(11, 0.05) == pytest.approx(2.201, abs=1e-3)  # the printed t-table value
    assert study.t_quantile(11, 0.4) == pytest.approx(0.876, abs=1e-3)
    # 80% power: (t_{1-alpha/2} + t_{0.8}) SD / sqrt(n); more seeds: smaller; stricter alpha: larger
    assert study.detectable_difference(5.0, 12, 0.05) == pytest.approx((2.201 + 0.876) * 5.0 / 12**0.5, rel=1e-3)
    assert study.detectable_difference(5.0, 24, 0.05) < study.detectable_difference(5.0, 12, 0.05)
    assert study.detectable_difference(5.0, 12, 0.05 / 24) > study.detectable_difference(5.0, 12, 0.05)
    n = study.seeds_needed(5.0, 3.0, 0.05)
    assert study.detectable_difference(5.0, n, 0.05) <= 3.0 < study.detectable_difference(5.0, n - 1, 0.05)
    assert study.seeds_needed(5.0, 0.0, 0.05) is None and study.seeds_needed(50.0, 0.01, 0.05) is None


def test_the_committed_report_is_generated_from_the_committed_runs_files():
    docs = REPO / "docs" / "study3"
    text = study.report(
        study.read_runs_file(docs / "compare.runs.jsonl"), study.read_runs_file(docs / "bracket.runs.jsonl")
    )
    assert (REPO / "docs" / "study3.md").read_text() == text
