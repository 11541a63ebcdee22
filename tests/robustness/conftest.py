"""Counts of the generated robustness cases, printed at the end of a run (per file: cases run,
passed, failed), so a report can quote them."""
from collections import Counter


def pytest_terminal_summary(terminalreporter):
    counts = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "tests/robustness/" not in nodeid or getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            counts.setdefault(nodeid.split("::")[0].rsplit("/", 1)[-1], Counter())[outcome] += 1
    if not counts:
        return
    terminalreporter.write_sep("-", "robustness cases")
    for name, c in sorted(counts.items()):
        total = sum(c.values())
        terminalreporter.write_line(f"{name}: {total} cases ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})")
    terminalreporter.write_line(f"all: {sum(sum(c.values()) for c in counts.values())} cases")
