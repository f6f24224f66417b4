"""ensure_zoo: content-hash caching, half-built recovery, the inter-process lock, and the real zoo's bar."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, LlamaForCausalLM

from service.runtime.processes import process_cmdline
from workers.settings import Settings
from workers.zoo.build import MARKER, BuildSpec, build_key, ensure_zoo, find_dictionary_trainer
from workers.zoo.corpus import SCORED_TASKS, CorpusSpec, read_jsonl
from workers.zoo.training import ModelSpec, evaluate

# A zoo small enough to build in seconds: the caching logic is the same as for the real one.
TINY = BuildSpec(
    corpus=CorpusSpec(n_train=2000, n_heldout_per_task=20),
    models=(
        ModelSpec(name="gpt2-4l", arch="gpt2", n_layer=1, d_model=32, n_head=2, steps=3, batch_size=8),
        ModelSpec(name="llama-2l", arch="llama", n_layer=1, d_model=32, n_head=2, steps=3, batch_size=8),
    ),
    train_dictionaries=False,
    max_parallel_models=1,
)


def _settings(tmp_path: Path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state")


def test_build_then_reuse_then_force(tmp_path) -> None:
    settings = _settings(tmp_path)
    paths = ensure_zoo(settings, spec=TINY, progress=False)
    assert paths.root == settings.zoo_dir / build_key(TINY)
    marker = paths.root / MARKER
    assert marker.read_text().strip() == build_key(TINY)
    assert isinstance(AutoModelForCausalLM.from_pretrained(str(paths.models["gpt2-4l"])), GPT2LMHeadModel)
    assert isinstance(AutoModelForCausalLM.from_pretrained(str(paths.models["llama-2l"])), LlamaForCausalLM)
    tok = AutoTokenizer.from_pretrained(str(paths.models["llama-2l"]), local_files_only=True)
    assert tok.bos_token_id == 1
    zoo_json = json.loads((paths.models["gpt2-4l"] / "zoo.json").read_text())
    assert set(zoo_json["heldout"]["accuracy"]) >= set(SCORED_TASKS)
    assert paths.dictionaries is None  # the tiny spec asks for no dictionaries
    assert len(read_jsonl(paths.heldout)) == 4 * TINY.corpus.n_heldout_per_task

    stamp = marker.stat().st_mtime_ns
    again = ensure_zoo(settings, spec=TINY, progress=False)
    assert again == paths and marker.stat().st_mtime_ns == stamp  # reused, not rebuilt

    forced = ensure_zoo(settings, spec=TINY, progress=False, force=True)
    assert forced == paths and (paths.root / MARKER).stat().st_mtime_ns != stamp


def test_half_built_directory_is_rebuilt(tmp_path) -> None:
    settings = _settings(tmp_path)
    root = settings.zoo_dir / build_key(TINY)
    (root / "models").mkdir(parents=True)  # a crashed build: files but no completion marker
    (root / "models" / "junk").write_text("half")
    (settings.zoo_dir / f"{build_key(TINY)}.partial").mkdir()
    paths = ensure_zoo(settings, spec=TINY, progress=False)
    assert (paths.root / MARKER).is_file()
    assert not (root / "models" / "junk").exists()
    assert not (settings.zoo_dir / f"{build_key(TINY)}.partial").exists()


def test_build_key_tracks_the_spec() -> None:
    assert build_key(TINY) == build_key(TINY)
    assert build_key(TINY) != build_key(replace(TINY, corpus=replace(TINY.corpus, train_seed=1)))
    assert build_key(TINY) != build_key(BuildSpec())


def test_two_processes_build_once(tmp_path) -> None:
    """Two concurrent ensure_zoo calls: the lock makes one build and the other reuse its result."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_build import TINY, _settings
        from pathlib import Path
        from workers.zoo.build import ensure_zoo
        print(ensure_zoo(_settings(Path({str(tmp_path)!r})), spec=TINY, progress=True).root)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert outs[0][0] == outs[1][0]
    builds = sum(err.count("building zoo") for _, err in outs)
    assert builds == 1, [e for _, e in outs]


@pytest.mark.slow
def test_real_zoo_gpt2_4l_meets_the_accuracy_bar() -> None:
    """Builds the real zoo on a cold cache (minutes), then re-scores gpt2-4l from its saved files."""
    paths = ensure_zoo()
    model = AutoModelForCausalLM.from_pretrained(str(paths.models["gpt2-4l"]))
    tok = AutoTokenizer.from_pretrained(str(paths.models["gpt2-4l"]), local_files_only=True)
    assert isinstance(model, GPT2LMHeadModel) and model.config.n_layer == 4
    heldout = read_jsonl(paths.heldout)
    with torch.no_grad():
        scores = evaluate(model, heldout, tok)
    for task in SCORED_TASKS:
        assert scores["accuracy"][task] >= 0.95, scores
    assert scores["ioi_logit_diff"] > 0
    llama = AutoModelForCausalLM.from_pretrained(str(paths.models["llama-2l"]))
    assert isinstance(llama, LlamaForCausalLM) and llama.config.num_hidden_layers == 2
    report = json.loads(paths.report.read_text())
    assert set(report["models"]) == {"gpt2-2l", "gpt2-4l", "llama-2l"}
    if find_dictionary_trainer() is not None:
        assert paths.dictionaries is not None and paths.dictionaries.is_dir()
        assert report["dictionaries"] is not None


def test_dictionary_token_batches_have_no_padding_and_start_with_bos() -> None:
    from workers.zoo.build import dictionary_token_batches
    from workers.zoo.corpus import train_examples
    from workers.zoo.tokenizer import build_tokenizer

    vocab = build_tokenizer().get_vocab()
    examples = train_examples(CorpusSpec(n_train=3000))
    batches = dictionary_token_batches(examples, vocab, batch_size=16, max_tokens=20_000)
    again = dictionary_token_batches(examples, vocab, batch_size=16, max_tokens=20_000)
    assert len(batches) == len(again) and all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    total = sum(b.numel() for b in batches)
    assert 20_000 <= total < 20_000 + 200  # stops at the first example past the budget
    for b in batches:
        assert b.dim() == 2 and b.shape[0] <= 16
        assert (b[:, 0] == vocab["<bos>"]).all()
        assert not (b == vocab["<pad>"]).any()


def test_build_leaves_the_callers_deterministic_mode_alone(tmp_path) -> None:
    torch.use_deterministic_algorithms(False)
    ensure_zoo(_settings(tmp_path), spec=TINY, progress=False)  # builds in this process (one model slot)
    assert not torch.are_deterministic_algorithms_enabled()


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc's children lists)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:  # the process is gone
            continue
        for c in map(int, children):
            out.add(c)
            todo.append(c)
    return out


def test_a_terminated_build_leaves_no_training_processes(tmp_path) -> None:
    """SIGTERM to a build that trains models in worker processes: the build exits and takes its
    trainings with it (they used to run on, orphaned, until their models were done)."""
    script = textwrap.dedent(
        f"""
        import sys
        from dataclasses import replace
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_build import TINY, _settings
        from pathlib import Path
        from workers.zoo.build import ensure_zoo
        slow = replace(TINY, models=tuple(replace(m, steps=1_000_000) for m in TINY.models), max_parallel_models=2)
        ensure_zoo(_settings(Path({str(tmp_path)!r})), spec=slow, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(_descendants(proc.pid)) < 2:  # the two training workers (and the resource tracker)
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the build never started its training workers"
            time.sleep(0.2)
        time.sleep(3)  # let them get into their training loops
        children = _descendants(proc.pid)
        proc.terminate()
        assert proc.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while any(process_cmdline(c) is not None for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if process_cmdline(c) is not None], (
            "training processes outlived the build"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
