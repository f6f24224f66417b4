from __future__ import annotations

from typing import get_type_hints

from pydantic import BaseModel, Field, create_model

from service.schemas.request import RequestBody
from workers.pipeline.registry import ID_PATTERN, RegisteredDictionarySet, RegisteredModel

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


def _response_of(name: str, record: type) -> type[BaseModel]:
    """A response model with exactly the fields (names, types, order) of the registry's own record, so that the
    field list has one home: ``workers/pipeline/registry.py``."""
    return create_model(name, **{field: (hint, ...) for field, hint in get_type_hints(record).items()})


ModelOut = _response_of("ModelOut", RegisteredModel)
DictionarySetOut = _response_of("DictionarySetOut", RegisteredDictionarySet)


class RegistryOut(BaseModel):
    models: list[ModelOut]
    dictionary_sets: list[DictionarySetOut]
