"""``info`` (verify a bundle, print its manifest summary) and ``doctor`` (the backend registry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def info(bundle: Annotated[Path, typer.Argument(help="bundle directory")]) -> None:
    """Verify a bundle (sha256 of every file) and print its manifest summary."""
    from ..bundle import open_bundle

    m = open_bundle(bundle).manifest
    summary = {
        "name": m.name, "architecture": m.architecture, "format_version": m.format_version,
        "created_by": m.created_by, "parts": {k: {"kind": p.kind, "file": p.file, "precision": p.precision}
                                              for k, p in m.parts.items()},
        "max_batch": m.max_batch, "source": m.source.model_dump(), "validation": m.validation,
        "files": {k: v.size for k, v in m.files.items()},
    }
    typer.echo(json.dumps(summary, indent=2))


def doctor(
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the table as JSON here")] = None,
) -> None:
    """Which backends can run here: one row per registered backend (available? why not, versions, device)."""
    from rich.table import Table

    from .. import __version__
    from ..atomic import write_json_atomic
    from ..backends import doctor_rows
    from ..progress import table_console

    rows = doctor_rows()
    table = Table("backend", "kind", "available", "why not", "versions", "device",
                  title=f"rsvlm-edge {__version__}: backends (auto picks the first available of each kind)")
    for r in rows:
        table.add_row(r["backend"], r["kind"], r["available"], r["why not"], r["versions"], r["device"])
    table_console().print(table)
    if json_out:
        write_json_atomic(json_out, {"rsvlm_edge": __version__, "backends": rows})


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    app.command()(info)
    app.command()(doctor)
