"""Pipeline limits and timings. Each field reads ``ATLAS_PIPELINE_<FIELD>`` (kept apart from
``workers.settings.Settings`` until the lead folds these fields into it)."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class PipelineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATLAS_PIPELINE_", env_file=".env", extra="ignore")

    # Validation of submitted corpora (a prompt is also limited by the model's own context).
    max_prompt_tokens: int = 512
    max_prompts: int = 20_000
    max_upload_bytes: int = 8 * 1024 * 1024
    # Liveness: running prompts refresh a heartbeat this often; the reaper re-enqueues a running prompt
    # whose heartbeat is older than stale_after_s (keep it several heartbeats long).
    heartbeat_s: float = 2.0
    stale_after_s: float = 30.0
    reaper_interval_s: float = 10.0
    # Deliveries of a prompt that may start and die (SIGKILL, hard time limit, OOM) before it is failed.
    max_attempts: int = 3
    # Celery retries of a prompt after transient Neo4j/Redis errors (exponential backoff, capped).
    max_retries: int = 10
    retry_backoff_max_s: float = 10.0
    # Fault-injection for tests only: each worker sleeps this long in the attribution stage, so that a
    # test can kill it mid-prompt. Never set in production.
    fault_delay_s: float = 0.0
    # Models and dictionary sets kept loaded per worker process (least recently used one is dropped).
    cache_size: int = 2
    # CPU threads torch uses in each worker process (0: torch's default, one per core). One thread per
    # process and one process per core is fastest on CPU: several processes' OpenMP pools spin against
    # each other otherwise (measured 10x slower per prompt on a loaded 2-core machine).
    torch_threads: int = 1


@lru_cache(maxsize=1)
def get_pipeline_settings() -> PipelineSettings:
    return PipelineSettings()
