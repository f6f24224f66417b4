from __future__ import annotations

from pydantic import BaseModel, Field


class ModelRegistration(BaseModel):
    model_id: str = Field(description="Name to submit corpora with: 1-64 letters, digits, '_', '.', '-'.")
    path: str = Field(description="A local Hugging Face model directory (with config.json) or a .gguf file.")


class DictionarySetRegistration(BaseModel):
    dictionary_set_id: str = Field(description="Name to submit corpora with (same rules as model_id).")
    path: str = Field(description="A dictionary set directory in any supported format (native, SAELens, "
                                  "circuit-tracer, lm-saes).")
    model_id: str = Field(description="The registered model these dictionaries splice into.")


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
