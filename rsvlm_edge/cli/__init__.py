"""``rsvlm-edge`` command line: one module per command group, registered here on one typer app.

Every user error prints one ``error:`` line and one ``fix:`` line and exits with code 2, without a
traceback and without leaving a partial output behind; Ctrl-C exits 130, SIGTERM 143
(``common.run_app``).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

from .common import install_early_signal_handlers

if sys.argv[0] == "-m" or os.path.basename(sys.argv[0]) == "rsvlm-edge":
    install_early_signal_handlers()  # the CLI process only: Ctrl-C/SIGTERM during the imports below exit cleanly

import typer  # noqa: E402

from . import bench, clip, engine, geo, index, info, llava  # noqa: E402
from .common import run_app  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run remote-sensing vision-language models (CLIP, LLaVA-class) from compiled bundles.")
export_app = typer.Typer(no_args_is_help=True, help="Export a checkpoint to a NAME.rsvlm bundle.")
app.add_typer(export_app, name="export")


@app.callback()
def _global_options(
    max_image_pixels: Annotated[Optional[int], typer.Option(
        help="largest image (pixels) any command decodes; default 178956970 (PIL's bomb limit)")] = None,
) -> None:
    """Run remote-sensing vision-language models (CLIP, LLaVA-class) from compiled bundles."""
    from ..native import check_thread_wait_env

    check_thread_wait_env()  # read by the native library: a wrong value is refused before any work
    if max_image_pixels is not None:
        from ..images import set_max_pixels

        set_max_pixels(max_image_pixels)


for _group in (clip, llava, geo, bench, info, engine, index):
    _group.register(app, export_app)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_app(app, argv))


__all__ = ["app", "main"]
