"""At the end of a test run, the fault-injection suite's counts (issue: hardening): faults injected, bad inputs
tried, runs resumed, and work lost (a resumed run whose metrics differ from the uninterrupted run's fails its test)."""

FAULTS = ("test_faults.py", "test_grpo_nonfinite.py", "test_reward_cpu_limit.py", "timeout", "kill", "pathological")
BAD_INPUT = ("invalid", "user_errors", "refuse", "bad_", "bad-", "mistake", "error", "unknown", "damaged")
RESUMED = ("resume",)


def pytest_terminal_summary(terminalreporter):
    passed = [r.nodeid for r in terminalreporter.stats.get("passed", [])]
    failed = [r.nodeid for r in terminalreporter.stats.get("failed", [])]
    count = lambda ids, words: sum(any(w in i.lower() for w in words) for i in ids)  # noqa: E731
    if count(passed + failed, FAULTS + BAD_INPUT + RESUMED):
        terminalreporter.write_line(
            f"fault suite: {count(passed, FAULTS)} fault-injection tests passed, {count(passed, BAD_INPUT)} bad-input "
            f"tests passed, {count(passed, RESUMED)} resume tests passed; work lost: "
            f"{count(failed, RESUMED)} resumed runs differed from their uninterrupted runs")
