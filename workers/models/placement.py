"""Where a process keeps its model and dictionaries: one device and one weight dtype per process
(``ATLAS_DEVICE``, ``ATLAS_DTYPE``; DESIGN.md §6).

The names are checked here without importing torch (the settings import this module); :func:`torch_device`
checks that the device exists, :func:`place` moves a loaded model and dictionary set there. The engine
computes wherever the model is (``Linearised.device``) and hands results back on the CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from workers.dictionaries.modules import DictionarySet

DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")
DTYPES = ("fp32", "bf16")


def check_device_name(name: str) -> str:
    """``name`` normalised (``cpu``, ``cuda``, ``cuda:N``), or ValueError saying what is accepted."""
    name = name.strip().lower()
    m = DEVICE_PATTERN.match(name)
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ValueError(f"device {name!r} is not one of cpu, cuda, cuda:N (N = the GPU's index)")
    return name


def check_dtype_name(name: str) -> str:
    name = name.strip().lower()
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return name


@dataclass(frozen=True)
class Placement:
    """A device name and a weight dtype name, both checked (``Placement("cuda:1", "bf16")``)."""

    device: str = "cpu"
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device_name(self.device))
        object.__setattr__(self, "dtype", check_dtype_name(self.dtype))

    @classmethod
    def from_settings(cls, settings=None) -> Placement:
        """The process's placement: ``ATLAS_DEVICE`` / ``ATLAS_DTYPE`` (workers.settings)."""
        if settings is None:
            from workers.settings import get_settings

            settings = get_settings()
        return cls(settings.device, settings.dtype)

    def torch_device(self) -> torch.device:
        """The torch device, after checking it exists: a clear error for cuda on a machine without CUDA."""
        import torch

        dev = torch.device(self.device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {self.device!r} was requested but torch sees no CUDA device "
                                   f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                                   "set ATLAS_DEVICE=cpu or run on a machine with a GPU")
            n = torch.cuda.device_count()
            if dev.index is not None and dev.index >= n:
                raise RuntimeError(f"device {self.device!r} was requested but this machine has {n} CUDA "
                                   f"device(s): cuda:0 .. cuda:{n - 1}")
        return dev

    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.dtype]


def place(model: torch.nn.Module, dictionaries: DictionarySet, placement: Placement) -> None:
    """Move ``model`` and every dictionary of ``dictionaries`` to the placement's device and dtype, in place
    (the device is checked first, so nothing moves when it does not exist)."""
    dev, dtype = placement.torch_device(), placement.torch_dtype()
    model.to(device=dev, dtype=dtype)
    for _, d in dictionaries:
        d.to(device=dev, dtype=dtype)
    clt = getattr(dictionaries, "clt", None)  # a cross-layer transcoder (CLTDictionarySet)
    if clt is not None:
        clt.to(device=dev, dtype=dtype)
