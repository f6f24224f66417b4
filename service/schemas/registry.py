from __future__ import annotations

from pydantic import BaseModel, Field

from service.schemas.request import RequestBody
from workers.pipeline.registry import ID_PATTERN

# The registry's own id rule, declared in the schema (so that a request the schema allows is never refused for
# its id).
_ID = ID_PATTERN.pattern
_PATH = r"^[^\x00]+$"  # no file system holds a NUL byte


class ModelRegistration(RequestBody):
    model_id: str = Field(pattern=_ID, description="Name to submit corpora with: 1-64 letters, digits, '_', '.', "
                                                   "'-', starting with a letter or digit.")
    path: str = Field(pattern=_PATH, description="A local Hugging Face model directory (with config.json) or a "
                                                 ".gguf file.")


class DictionarySetRegistration(RequestBody):
    dictionary_set_id: str = Field(pattern=_ID, description="Name to submit corpora with (same rules as model_id).")
    path: str = Field(pattern=_PATH, description="A dictionary set directory in any supported format (native, SAELens, "
                                  "circuit-tracer, lm-saes).")
    model_id: str = Field(pattern=_ID, description="The registered model these dictionaries splice into.")


class ModelOut(BaseModel):
    model_id: str
    path: str
    format: str
    content_hash: str
    n_ctx: int | None
    registered_at: float


class DictionarySetOut(BaseModel):
    dictionary_set_id: str
    path: str
    format: str
    content_hash: str
    model_id: str
    n_dictionaries: int
    registered_at: float


class RegistryOut(BaseModel):
    models: list[ModelOut]
    dictionary_sets: list[DictionarySetOut]
