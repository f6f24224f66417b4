"""A tiny random GPT-2 (zoo tokenizer) with random dictionaries on disk, registered in the real Neo4j;
the app in-process (TestClient, real ASGI stack over real Neo4j/Redis); real worker subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch


def build_tiny_model(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """(HF model dir, native dictionary set dir): GPT-2 with 2 layers, d=32, the zoo's word tokenizer, and
    an SAE per attention output + a transcoder per MLP whose encoder biases make a few features fire."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workers.dictionaries.formats import save_dictionary_set
    from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet
    from workers.zoo.tokenizer import build_tokenizer, save_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    model_dir, dict_dir = out / "model", out / "dictionaries"
    model.save_pretrained(model_dir)
    save_tokenizer(tok, model_dir)
    gen = torch.Generator().manual_seed(seed)
    dicts = {}
    for layer in range(2):
        for site in ("attn", "mlp"):
            dc = DictionaryConfig(kind="sae" if site == "attn" else "transcoder", site=site, layer=layer, d_in=32,
                                  d_out=32, d_dict=48, activation="relu")
            d = Dictionary(dc).init_weights_(gen)
            with torch.no_grad():
                d.W_enc.copy_(torch.randn(48, 32, generator=gen))
                d.b_enc.copy_(-2.0 * torch.ones(48))  # about 5% of features fire on unit-scale inputs
            dicts[(layer, site)] = d
    save_dictionary_set(DictionarySet(dicts, model_name="tiny-gpt2"), dict_dir)
    return model_dir, dict_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:  # noqa: ANN001
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def registered(neo4j_driver, tiny_model, unique_id, settings) -> tuple[str, str]:  # noqa: ANN001
    """(model_id, dictionary_set_id) of the tiny model, registered under fresh names."""
    from workers.pipeline.registry import register_dictionary_set, register_model

    model_dir, dict_dir = tiny_model
    register_model(neo4j_driver, f"{unique_id}-m", model_dir, settings.neo4j_database)
    register_dictionary_set(neo4j_driver, f"{unique_id}-d", dict_dir, f"{unique_id}-m", settings.neo4j_database)
    return f"{unique_id}-m", f"{unique_id}-d"


@pytest.fixture(scope="session")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def start_worker(name: str, extra_env: dict[str, str] | None = None, queues: str = "gpu,cpu") -> subprocess.Popen:
    argv = [sys.executable, "-m", "service.cli", "worker", "--queues", queues, "--concurrency", "1",
            "--name", name, "--loglevel", "warning"]
    env = {**os.environ, **(extra_env or {})}
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def worker_factory(unique_id) -> Iterator[Callable[..., subprocess.Popen]]:  # noqa: ANN001
    procs: list[subprocess.Popen] = []

    def make(extra_env: dict[str, str] | None = None, queues: str = "gpu,cpu") -> subprocess.Popen:
        procs.append(start_worker(f"{unique_id}-{len(procs)}", extra_env, queues))
        return procs[-1]

    yield make
    for p in procs:
        stop_worker(p)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)
