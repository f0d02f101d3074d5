"""Safe reading of torch / safetensors checkpoint files, with one clear error per failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


def load_torch_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (never arbitrary pickles) and clear errors."""
    import pickle
    import zipfile

    import torch

    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist", "check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes)", "download or copy it again")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("constants.pkl") for n in z.namelist()):
                raise CheckpointError(
                    f"checkpoint '{path}' is a TorchScript archive (OpenAI JIT format), not a state dict",
                    "load it once with open_clip (pretrained=path, jit=False) and torch.save(model.state_dict())",
                )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' contains objects other than tensors and plain containers ({str(e).splitlines()[0]})",
            "re-save it as a plain state dict: torch.save(model.state_dict(), path)",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({e.__class__.__name__}: {str(e).splitlines()[0]})",
            "download or copy the file again and compare its size/sha256 with the source",
        ) from None


def load_safetensors_file(path: Path) -> dict[str, Any]:
    """All tensors of a .safetensors file as torch tensors, with clear errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist", "check the path")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"safetensors file '{path}' is truncated or corrupt ({e})",
            "download or copy the file again",
        ) from None


def load_tensor_file(path: Path) -> dict[str, Any]:
    """A state-dict-like object from .safetensors or a torch file."""
    if path.suffix == ".safetensors":
        return load_safetensors_file(path)
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(obj).__name__}, expected a dict of tensors",
            "save the model's state_dict(), not the model object",
        )
    return obj


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{path}' is not readable JSON ({e})", "restore the file from the checkpoint source") from None
