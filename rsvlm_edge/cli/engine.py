"""``build-engine``: TensorRT engines for every graph part of a bundle, built ahead of time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError

ENGINE_PRECISIONS = ("fp16", "fp32", "int8")


def build_engine_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory (NAME.rsvlm)")],
    precision: Annotated[Optional[str], typer.Option(help="fp16 | fp32 | int8. Default: int8 for int8 graphs (their S8S8 variant), fp16 for the others; int8 parts are always int8")] = None,
    workspace_mb: Annotated[int, typer.Option(help="TensorRT builder workspace limit in MiB (8 GB Jetson boards: 2048 or less)")] = 2048,
    cache_dir: Annotated[Optional[Path], typer.Option(help="write engines here instead of BUNDLE/engines (read-only bundles default to the user cache); runtimes find them through RSVLM_EDGE_ENGINE_CACHE")] = None,
    force: Annotated[bool, typer.Option(help="rebuild even when a valid engine exists")] = False,
) -> None:
    """Build TensorRT engines for a bundle on this GPU (minutes each; later loads take seconds).

    Engines are named by part, precision, batch profile (1 .. the bundle's max batch), GPU, compute capability, TensorRT version and graph sha256; a signed JSON sidecar beside each is checked before it is ever loaded, and a stale or foreign engine is rebuilt."""
    from ..backends.graph_trt import build_engines
    from ..bundle import open_bundle
    from ..progress import info
    from .common import positive, shown

    if precision is not None and precision not in ENGINE_PRECISIONS:
        raise InputError(f"unknown --precision '{precision}'", f"choose one of {', '.join(ENGINE_PRECISIONS)}")
    positive(workspace_mb, "--workspace-mb", "2048")
    b = open_bundle(bundle)
    for part, plan, key in build_engines(b, precision, cache_dir, workspace_mb, force):
        info(f"{part}: {key.precision} engine {shown(plan)}")


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    app.command("build-engine")(build_engine_cmd)
