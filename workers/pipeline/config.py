"""Pipeline limits and timings: ``PipelineSettings`` (``ATLAS_PIPELINE_<FIELD>``) is part of the one
settings object, ``get_settings().pipeline``; this module keeps the pipeline's short names for it."""

from __future__ import annotations

from workers.settings import PipelineSettings, get_settings

__all__ = ["PipelineSettings", "get_pipeline_settings"]


def get_pipeline_settings() -> PipelineSettings:
    return get_settings().pipeline
