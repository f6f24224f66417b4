"""The ``attribute`` CLI command end to end on a saved model directory and dictionary set."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from tests.engine.conftest import PROMPTS, calibrate, make_dicts, make_gpt2
from workers.dictionaries.formats import save_dictionary_set
from workers.engine.cli import attribute
from workers.engine.graph import Graph
from workers.engine.linearise import Linearised


@pytest.fixture
def run_cli(tmp_path):  # noqa: ANN001, ANN201
    """Saves a small GPT-2 and its transcoders, and returns ``run(*options)``: the ``attribute`` command on them and
    PROMPTS[0]."""
    model = make_gpt2(2, 64)
    dicts = make_dicts(model, 2, 64, sites=("mlp",))
    calibrate(Linearised(model, dicts), PROMPTS[0])
    model.save_pretrained(tmp_path / "model")
    save_dictionary_set(dicts, tmp_path / "dicts")
    app = typer.Typer()
    app.command()(attribute)
    ids = ",".join(str(i) for i in PROMPTS[0].tolist())

    def run(*options: str):  # noqa: ANN202
        return CliRunner().invoke(app, ["--model", str(tmp_path / "model"), "--dictionaries", str(tmp_path / "dicts"),
                                        ids, "--ids", *options])

    return run


def test_cli_attribute_prints_summary_and_writes_outputs(run_cli, tmp_path):  # noqa: ANN001
    res = run_cli("-t", "top", "-t", "diff:3,4", "--out", str(tmp_path / "g"), "--neuronpedia", str(tmp_path / "np.json"))
    assert res.exit_code == 0, res.output
    assert "replacement_unpruned" in res.output and "target:diff" in res.output
    g = Graph.load(tmp_path / "g")
    assert g.provenance["model_hash"] and g.provenance["dictionary_hash"]
    assert g.influence is not None
    np_json = json.loads((tmp_path / "np.json").read_text())
    assert np_json["metadata"]["schema_version"] == 1 and np_json["nodes"] and np_json["links"]


def test_cli_node_budget(run_cli, tmp_path):  # noqa: ANN001
    res = run_cli("--max-feature-nodes", "5", "--out", str(tmp_path / "g"))
    assert res.exit_code == 0, res.output
    g = Graph.load(tmp_path / "g")
    assert g.provenance["budget"]["expanded_features"] == 5 and "unexp" in g.kinds
    bad = run_cli("--max-feature-nodes", "-1")
    assert bad.exit_code != 0 and "max-feature-nodes" in bad.output


def test_cli_device_and_dtype(run_cli, tmp_path):  # noqa: ANN001
    ok = run_cli("--dtype", "bf16", "--device", "cpu", "--out", str(tmp_path / "g"))
    assert ok.exit_code == 0, ok.output
    assert Graph.load(tmp_path / "g").provenance["weights_dtype"] == "bfloat16"
    bad = run_cli("--device", "tpu")
    assert bad.exit_code != 0 and "is not one of cpu, cuda, cuda:N" in bad.output
    if not torch.cuda.is_available():  # on a GPU machine 'cuda' is valid; the refusal is for a machine without one
        nogpu = run_cli("--device", "cuda")
        assert nogpu.exit_code != 0 and "sees no CUDA device" in nogpu.output


def test_cli_lazy_and_eager_dictionaries_give_the_same_graph(run_cli, tmp_path):  # noqa: ANN001
    for mode in ("--lazy", "--eager"):
        res = run_cli(mode, "--max-feature-nodes", "8", "--out", str(tmp_path / mode))
        assert res.exit_code == 0, res.output
    lazy, eager = Graph.load(tmp_path / "--lazy"), Graph.load(tmp_path / "--eager")
    assert lazy.node_ids == eager.node_ids
    assert torch.equal(lazy.adjacency.to_dense(), eager.adjacency.to_dense())
    assert lazy.provenance["dictionary_hash"] == eager.provenance["dictionary_hash"]
