"""Built-in default models: real architectures with seeded random weights, for timing only.

They are built with open_clip (export extra) on first use and cached under
``$RSVLM_EDGE_CACHE`` (default ``~/.cache/rsvlm-edge``)/builtin.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import __version__
from .errors import InputError
from .progress import warn

BUILTIN_CLIP = {
    # name: (open_clip architecture, activation)
    "remoteclip-vit-b-32": ("ViT-B-32", "quick_gelu"),
}
BUILTIN_VLM = ("tinyllava-1b",)
RANDOM_WEIGHTS_NOTE = "built-in model with seeded random weights: timing only, its predictions mean nothing"


def cache_dir() -> Path:
    d = Path(os.environ.get("RSVLM_EDGE_CACHE", Path.home() / ".cache" / "rsvlm-edge")) / "builtin"
    d.mkdir(parents=True, exist_ok=True)
    return d


def is_builtin(target: str) -> bool:
    return target.startswith("builtin:")


def builtin_name(target: str) -> str:
    name = target.removeprefix("builtin:")
    if name not in BUILTIN_CLIP and name not in BUILTIN_VLM:
        raise InputError(f"unknown built-in model '{target}'",
                         "use " + " or ".join(f"builtin:{n}" for n in (*BUILTIN_CLIP, *BUILTIN_VLM)))
    return name


def builtin_clip_bundle(name: str, precision: str) -> Path:
    """Path of the cached bundle for a built-in CLIP at ``precision``, exporting it on first use.

    The export runs in a child process, so the caller (e.g. ``bench``) never holds torch or the export's
    memory: its timings and peak RSS are those of the runtime alone."""
    import subprocess
    import sys

    from .bundle import open_bundle
    from .errors import BundleError, RsvlmError

    arch, _ = BUILTIN_CLIP[name]
    out = cache_dir() / f"{name}-{precision}-v{__version__}.rsvlm"
    try:
        open_bundle(out, verify=False)
        return out
    except BundleError:
        pass
    warn(f"building builtin:{name} ({arch}, {precision}) once into {out}: {RANDOM_WEIGHTS_NOTE}")
    r = subprocess.run([sys.executable, "-m", "rsvlm_edge.builtin", name, precision, str(out)],
                       stdout=subprocess.PIPE, stderr=None, text=True)
    if r.returncode != 0:
        raise RsvlmError(f"building builtin:{name} ({precision}) failed (exit {r.returncode}; its messages are above)",
                         "install the export extra: pip install torch==2.14.1 torchvision==0.29.1 && pip install 'rsvlm-edge[export]'")
    return out


def _export_builtin_clip(name: str, precision: str, out: Path) -> None:
    """Child-process side of ``builtin_clip_bundle``: seeded random weights -> state dict -> bundle."""
    arch, act = BUILTIN_CLIP[name]
    ckpt = cache_dir() / f"{name}-seed0.pt"
    if not ckpt.exists():
        import open_clip
        import torch

        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=act == "quick_gelu")
        tmp = ckpt.with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(ckpt)
    from .export.clip import export_clip

    export_clip(ckpt, out, precision=precision, activation=act, overwrite=True, n_synthetic_calib=32)


if __name__ == "__main__":
    import sys

    from .errors import RsvlmError
    from .progress import console

    try:
        _export_builtin_clip(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
    except RsvlmError as e:
        console.print(f"[bold red]error:[/bold red] {e.message}", highlight=False)
        sys.exit(2)
