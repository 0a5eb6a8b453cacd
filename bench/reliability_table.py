"""The reliability table at the end of docs/reliability.md: the fault tests run, counted by category.

    python bench/reliability_table.py            # default and slow fault tests (several minutes)
    python bench/reliability_table.py --fast     # the default run's fault tests only

Each category is a set of test files (and test names) that try one kind of fault as a user or a
machine would. Every case asserts its promise (one ``error:`` line and exit 2 without a traceback;
a resume bit-identical to an uninterrupted run; a refusal where the result would be wrong), so a
passing case is one where the promise held; the table counts them, and any failure.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (category, what each case asserts, test files, a regex the test's name must match, what a failed
# case would be: a traceback instead of one line, a silent wrong result, or data lost). A test counts
# in the first category it matches.
CATEGORIES = [
    ("bad configuration", "one `error:` line, exit 2, no traceback, no run folder left",
     ["test_config_errors.py", "test_print_config.py", "test_probe.py", "test_startup.py"],
     r"one_line|bad_config|refused|error", "traceback"),
    ("bad data files", "one line naming the file, before the first step; no run folder left",
     ["test_data_refusals.py", "test_datasets.py", "test_datamodules.py"], r"refus|corrupt|broken|bad|missing|error|one_line|truncat|damag", "traceback"),
    ("files that could run code", "the payload never runs; one line naming the file",
     ["test_untrusted_files.py"], r".", "traceback"),
    ("damaged or foreign checkpoints", "one line naming the file; nothing loaded",
     ["test_reliability.py", "test_evaluate.py", "test_resume.py", "test_finetune.py"],
     r"digest|flipped|damaged|unsigned|without_a_digest|another_model|errors_name|refused_fine_tune|asks_for", "traceback"),
    ("silent wrong results", "refused in one line, or the same figures as an uninterrupted run",
     ["test_reliability.py", "test_evaluate.py", "test_export.py", "test_config_errors.py", "test_run_metrics.py"],
     r"same_keys|hand_edited|class|opset|trains_no|no_step|mistyped|wrong_type|errors_name", "silent wrong result"),
    ("outputs", "an earlier result never replaced silently; no partial file; one line",
     ["test_export.py", "test_reliability.py"], r"refusals|out_that|overwrit|lock|moved|already", "data lost"),
    ("kills and preemption", "last.ckpt whole; the resume bit-identical to an uninterrupted run",
     ["test_preemption.py", "test_reliability.py", "test_resume.py"], r"kill|preempt|sigterm|signal|interrupted|bit_identical|resum|exactly", "data lost"),
]


class Tally:
    """A pytest plugin counting the outcome of every test, by node id."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.outcomes[report.nodeid] = report.outcome


def table(outcomes: dict[str, str]) -> str:
    kinds = ("traceback", "silent wrong result", "data lost")
    lines = ["| category | each case asserts | cases tried | promise held | tracebacks | silent wrong results | data lost |",
             "|---|---|---|---|---|---|---|"]
    totals: Counter = Counter()
    placed: set[str] = set()
    for name, promise, files, pattern, failure in CATEGORIES:
        mine = {node: outcome for node, outcome in outcomes.items() if node not in placed
                and node.split("::")[0].rsplit("/", 1)[-1] in files and re.search(pattern, node.split("::", 1)[-1])}
        placed |= mine.keys()
        counts = Counter(mine.values())
        row = Counter(cases=counts["passed"] + counts["failed"], passed=counts["passed"], **{failure: counts["failed"]})
        totals.update(row)
        lines.append(f"| {name} | {promise} | {row['cases']} | {row['passed']} | " + " | ".join(str(row[k]) for k in kinds) + " |")
    lines.append(f"| **all** | | **{totals['cases']}** | **{totals['passed']}** | "
                 + " | ".join(f"**{totals[k]}**" for k in kinds) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="only the tests of the default run (no -m slow)")
    args = parser.parse_args()
    files = sorted({f for _, _, names, _, _ in CATEGORIES for f in names if (ROOT / "tests" / f).is_file()})
    tally = Tally()
    marker = "not slow" if args.fast else ""
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", marker, *[str(ROOT / "tests" / f) for f in files]],
                       plugins=[tally])
    print()
    print(table(tally.outcomes))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
