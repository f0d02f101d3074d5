"""Built-in default models: real architectures with seeded random weights, for timing only.

Names and the cache live here (runtime side); the models are made by the package's own export code
(``rsvlm_edge.export.builtin``, needs the export extra) on first use and cached under
``$RSVLM_EDGE_CACHE`` (default ``~/.cache/rsvlm-edge``)/builtin.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import __version__
from .errors import InputError, RsvlmError
from .progress import warn

BUILTIN_CLIP = {
    # name: (open_clip architecture, activation)
    "remoteclip-vit-b-32": ("ViT-B-32", "quick_gelu"),
}
BUILTIN_VLM = ("tinyllava-1b",)
RANDOM_WEIGHTS_NOTE = "built-in model with seeded random weights: timing only, its predictions mean nothing"
EXPORT_FIX = "install the export extra: pip install torch==2.14.1 torchvision==0.29.1 && pip install 'rsvlm-edge[export]'"


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
    from .errors import BundleError

    arch, _ = BUILTIN_CLIP[name]
    out = cache_dir() / f"{name}-{precision}-v{__version__}.rsvlm"
    try:
        open_bundle(out, verify=False)
        return out
    except BundleError:
        pass
    warn(f"building builtin:{name} ({arch}, {precision}) once into {out}: {RANDOM_WEIGHTS_NOTE}")
    r = subprocess.run([sys.executable, "-m", "rsvlm_edge.export.builtin", name, precision, str(out)],
                       stdout=subprocess.PIPE, stderr=None, text=True)
    if r.returncode != 0:
        raise RsvlmError(f"building builtin:{name} ({precision}) failed (exit {r.returncode}; its messages are above)",
                         EXPORT_FIX)
    return out


def builtin_vlm_paths(name: str) -> tuple[Path, Path]:
    """(transformers checkpoint dir, bundle) of a builtin VLM in the cache."""
    return cache_dir() / f"{name}-seed0-hf", cache_dir() / f"{name}-fp16-v{__version__}.rsvlm"


def builtin_vlm_bundle(name: str, progress=None) -> Path:
    """Path of the cached bundle of a built-in VLM, built on first use (needs the export extra)."""
    from .bundle import open_bundle
    from .errors import BundleError

    ckpt, bundle = builtin_vlm_paths(name)
    try:
        open_bundle(bundle, verify=False)
        return bundle
    except BundleError:
        pass
    try:
        from .export.builtin import build_builtin_vlm
    except ImportError as e:
        raise InputError(f"building builtin:{name} needs the export extras ({e})", EXPORT_FIX) from None
    build_builtin_vlm(name, ckpt, bundle, progress)
    return bundle


def resolve_target(target: str, progress=None) -> Path:
    """A bundle path for ``target`` (a path, or ``builtin:NAME`` built on first use)."""
    if not is_builtin(target):
        return Path(target)
    name = builtin_name(target)
    if name in BUILTIN_VLM:
        return builtin_vlm_bundle(name, progress)
    raise InputError(f"'{target}' is a CLIP model: pass a precision", "use builtin_clip_bundle(name, precision)")
