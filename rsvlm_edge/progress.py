"""Rich progress bars and console for long work (export, calibration, bench sweeps)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True, soft_wrap=True)


def progress() -> Progress:
    """A progress display on stderr (disabled automatically when stderr is not a terminal)."""
    return Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False, disable=not sys.stderr.isatty(),
    )


def table_console() -> Console:
    """Console for result tables on stdout: the terminal's width, or 200 columns when piped to a file
    (rich would otherwise cut columns at 80)."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}")


def info(msg: str) -> None:
    console.print(msg)
