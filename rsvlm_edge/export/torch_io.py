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
    corrupt_fix = "download or copy the file again and compare its size/sha256 with the source"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("constants.pkl") for n in z.namelist()):
                    raise CheckpointError(
                        f"checkpoint '{path}' is a TorchScript archive (OpenAI JIT format), not a state dict",
                        "load it once with open_clip (pretrained=path, jit=False) and torch.save(model.state_dict())",
                    )
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt ({e.__class__.__name__})", corrupt_fix) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(
            f"checkpoint '{path}' contains objects other than tensors and plain containers ({first[:300]})",
            "re-save it as a plain state dict: torch.save(model.state_dict(), path)",
        ) from None
    except MemoryError:
        raise CheckpointError(f"checkpoint '{path}' does not fit in memory", "use a machine with more RAM") from None
    except Exception as e:  # a hostile or damaged file can make the unpickler raise almost anything
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({e.__class__.__name__}: {first[:300]})", corrupt_fix
        ) from None


def load_safetensors_file(path: Path) -> dict[str, Any]:
    """All tensors of a .safetensors file as torch tensors, with clear errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist", "check the path")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"safetensors file '{path}' is truncated or corrupt ({str(e)[:300]})",
            "download or copy the file again",
        ) from None


def load_tensor_file(path: Path) -> dict[str, Any]:
    """A state-dict-like object from .safetensors or a torch file, checked by
    ``validate.check_tensor_file``: a dict of name -> dense floating-point tensor (or a training
    checkpoint whose ``state_dict`` is one), every weight finite and of the rank its name implies."""
    from .validate import check_tensor_file

    obj = load_safetensors_file(path) if path.suffix == ".safetensors" else load_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(obj).__name__}, expected a dict of tensors",
            "save the model's state_dict(), not the model object",
        )
    check_tensor_file(obj, path)
    return obj


MAX_JSON_BYTES = 64 << 20  # config.json / shard index / preprocessor config: a few KiB to a few MiB


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object (config.json, shard index, preprocessor config); anything else is refused."""
    fix = "restore the file from the checkpoint source"
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"'{path}' is larger than {MAX_JSON_BYTES >> 20} MiB, not a config file", fix)
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"'{path}' is not readable JSON ({e.__class__.__name__}: {str(e)[:200]})", fix) from None
    if not isinstance(data, dict):
        kind = "a JSON list" if isinstance(data, list) else f"JSON {type(data).__name__}"
        raise CheckpointError(f"'{path}' holds {kind}, expected a JSON object ({{...}})", fix)
    return data
