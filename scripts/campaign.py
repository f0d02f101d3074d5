#!/usr/bin/env python3
"""Run the trust campaign (every test marked ``@pytest.mark.campaign("category")``) and print a
table: category, cases tried, passed. Exit status is pytest's.

Usage: python scripts/campaign.py [--json out.json] [extra pytest args]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import pytest


class _Tally:
    def __init__(self) -> None:
        self.tried: Counter[str] = Counter()
        self.passed: Counter[str] = Counter()
        self._category: dict[str, str] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            mark = item.get_closest_marker("campaign")
            if mark is not None:
                self._category[item.nodeid] = mark.args[0] if mark.args else "other"

    def pytest_runtest_logreport(self, report) -> None:
        cat = self._category.get(report.nodeid)
        if cat is None:
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.tried[cat] += 1
            if report.passed:
                self.passed[cat] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args, rest = ap.parse_known_args()
    tally = _Tally()
    code = pytest.main(["-q", "-m", "campaign", "-p", "no:cacheprovider", *rest], plugins=[tally])
    from rich.console import Console
    from rich.table import Table

    table = Table("category", "cases tried", "passed", title="rsvlm-edge trust campaign")
    for cat in sorted(tally.tried):
        table.add_row(cat, str(tally.tried[cat]), str(tally.passed[cat]))
    total_t, total_p = sum(tally.tried.values()), sum(tally.passed.values())
    table.add_row("[bold]total", f"[bold]{total_t}", f"[bold]{total_p}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"tried": dict(tally.tried), "passed": dict(tally.passed),
                                         "total_tried": total_t, "total_passed": total_p}, indent=2) + "\n")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
