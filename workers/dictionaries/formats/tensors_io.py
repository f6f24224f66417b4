"""Reading tensors and configs from files with errors that name the file, the key and the shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing config file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def take(tensors: dict[str, torch.Tensor], key: str, path: Path, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """tensors[key], checked against ``shape`` (None: any shape); the error names key, file and shape."""
    if key not in tensors:
        raise ValueError(f"tensor {key!r} missing from {path}" +
                         (f" (expected shape {list(shape)})" if shape is not None else "") +
                         f"; the file has {sorted(tensors)}")
    t = tensors[key]
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"tensor {key!r} in {path} has shape {list(t.shape)}; expected {list(shape)}")
    return t


def need(cfg: dict[str, Any], key: str, path: Path) -> Any:
    if key not in cfg:
        raise ValueError(f"config key {key!r} missing from {path}; the file has {sorted(cfg)}")
    return cfg[key]
