"""Shared by the bench scripts (they import it as a sibling module): the ``--json`` / ``--plot`` /
``--from-json`` outputs of the model sweeps and the pieces of their markdown tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rsvlm_edge.bench.timing import write_outputs


def add_output_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None, help="only render the table of an earlier run")


def run_sweep(a: argparse.Namespace, sweep: Callable[[], dict], markdown: Callable[[dict], str]) -> None:
    """The result of an earlier run (``--from-json``), or of ``sweep()`` written to ``--json`` /
    ``--plot``; prints its markdown table."""
    if a.from_json:
        result = json.loads(a.from_json.read_text())
    else:
        result = sweep()
        write_outputs(result, a.json, a.plot)
    print(markdown(result))


def ratio_cell(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def with_notes(lines: list[str], result: dict) -> str:
    """The table ``lines`` followed by the result's notes."""
    return "\n".join(lines + [""] + [f"Note: {n}" for n in result["notes"]])
