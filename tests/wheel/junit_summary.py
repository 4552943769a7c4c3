"""Summarise a pytest JUnit XML: passed / skipped / failed counts and every skip reason.

Used by tools/wheel-aarch64.sh after the unit tier ran under qemu-user. Exits 1 when a test
failed or errored, or when the file holds no test at all (a run that collected nothing must
not pass).

Usage: python junit_summary.py RESULTS.xml LABEL
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter


def summarise(path: str) -> tuple[Counter, Counter]:
    counts: Counter = Counter()
    reasons: Counter = Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag == "skipped":
                outcome = "skipped"
                reasons[child.get("message", "").strip()] += 1
            elif child.tag in ("failure", "error"):
                outcome = "failed"
        counts[outcome] += 1
    return counts, reasons


def main(argv: list[str]) -> int:
    path, label = argv[1], argv[2]
    counts, reasons = summarise(path)
    total = sum(counts.values())
    print(f"wheel-check: {label}: {counts['passed']} passed, {counts['skipped']} skipped, "
          f"{counts['failed']} failed ({total} tests)")
    for reason, n in sorted(reasons.items()):
        print(f"wheel-check:   skipped {n}x: {reason}")
    return 1 if counts["failed"] or not total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
