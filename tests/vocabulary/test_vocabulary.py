"""The shared vocabulary (workers/vocabulary): torch-free, one mapping between the engine's and the store's
kinds, tensor names that parse back to what built them, and the viewer's schema built from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.vocabulary import defaults, ids, kinds, tensors


def test_vocabulary_imports_without_torch():
    code = ("import sys, workers.vocabulary.ids, workers.vocabulary.kinds, workers.vocabulary.tensors, "
            "workers.vocabulary.defaults; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_kind_mapping_is_one_to_one_and_labelled():
    assert set(kinds.STORE_KIND) == set(kinds.KINDS)
    assert len(set(kinds.STORE_KIND.values())) == len(kinds.KINDS)
    assert all(kinds.STORE_KIND[kinds.ENGINE_KIND[s]] == s for s in kinds.STORE_KINDS)
    assert set(kinds.NEO4J_LABEL) == set(kinds.STORE_KINDS)
    assert set(kinds.DEFAULT_KEEP_KINDS) <= set(kinds.STORE_KINDS)
    # every node id a kind builds parses back to that kind
    built = {"emb": ids.emb_id(3), "pos": ids.pos_id(3), "feat": ids.feat_id(2, "mlp", 5, 17),
             "err": ids.err_id(1, "attn", 0), "unexp": ids.unexp_id(0, "mlp", 4), "bias": ids.bias_id("all"),
             "logit": ids.logit_id(7, 42), "target": ids.target_id("diff Mary-John")}
    assert set(built) == set(kinds.KINDS)
    assert all(ids.parse(v).kind == k for k, v in built.items())


@pytest.mark.parametrize("name, parsed", [
    (tensors.site_input(2, "mlp"), ("in", 2, "mlp")),
    (tensors.site_input(0, "attn"), ("in", 0, "attn")),
    (tensors.site_delta(3, "attn"), ("delta", 3, "attn")),
    (tensors.resid(11), ("resid", 11, None)),
    (tensors.queries(1), ("q", 1, None)),
    (tensors.keys(1), ("k", 1, None)),
    (tensors.FINAL, ("final", None, None)),
])
def test_tensor_names_parse_back(name, parsed):  # noqa: ANN001
    t = tensors.parse_tensor(name)
    assert (t.kind, t.layer, t.site) == parsed


@pytest.mark.parametrize("bad", ["in:L2.resid", "resid:2", "in:L.mlp", "final:L1", "x:L1", "in:L2.mlp "])
def test_tensor_parser_rejects_other_names(bad):  # noqa: ANN001
    with pytest.raises(ValueError):
        tensors.parse_tensor(bad)


def test_uids_keys_and_defaults():
    assert ids.node_uid("g1", "feat:L0.mlp:p1:f2") == "g1|feat:L0.mlp:p1:f2"
    assert ids.feature_key("set", ids.site_name(1, "mlp"), 17) == "set/L1.mlp#17"
    assert 0 < defaults.NODE_THRESHOLD < defaults.EDGE_THRESHOLD <= 1
    assert set(defaults.FINAL_JOB_STATES) < set(defaults.JOB_STATES)


def test_ui_schema_is_built_from_the_vocabulary():
    from service.ui.schema import ui_schema

    s = ui_schema()
    assert list(s["kinds"]) == list(kinds.STORE_KINDS)
    assert {k: v["engine"] for k, v in s["kinds"].items()} == kinds.ENGINE_KIND
    assert {k: v["label"] for k, v in s["kinds"].items()} == kinds.NEO4J_LABEL
    assert s["sites"] == list(tensors.SITES) and s["job_states"] == list(defaults.JOB_STATES)
    assert {v["shape"] for v in s["kinds"].values()} <= {"circle", "square", "diamond"}
    assert [k for k, v in s["kinds"].items() if v["token"]] == list(kinds.TOKEN_KINDS)
