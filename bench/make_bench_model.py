"""Build the benchmark model of issue #4: a random 4-layer, d_model 128 GPT-2 with a 1,024-feature ReLU
transcoder per layer, written twice (circuit-tracer's transcoder-set layout and our native dictionary
layout) plus the benchmark prompts and reference activations, so that our engine and circuit-tracer
run on exactly the same function.

Run with the MAIN venv (transformers 5.x)::

    ~/.cache/circuit-atlas/venv/bin/python bench/make_bench_model.py [--out DIR]

Output (default ``<ATLAS_CACHE_DIR>/bench/gpt2-4l-d128``, outside git)::

    model/                 Hugging Face GPT2LMHeadModel dir (config.json, model.safetensors, tokenizer)
    transcoders_ct/        circuit-tracer transcoder set: config.yaml + layer_{i}.safetensors
    dictionaries/          the same transcoders as our DictionarySet (native layout, site "mlp")
    clt_ct/                a cross-layer transcoder (issue #19) in circuit-tracer's CLT layout: the transcoders'
                           encoders (so the same activations) with decoders to every later layer
    clt_dictionaries/      the same CLT in our native layout (a CLTDictionarySet)
    clt_resid_ct/          a CLT reading ``hook_resid_mid`` (circuit-tracer's default input: the residual before
                           ``ln_2``), the same decoders, encoder biases calibrated on that residual
    clt_resid_dictionaries/  the same in our native layout
    prompts.json           benchmark prompts as token ids (BOS first), keyed by length
    reference.safetensors  per prompt: last-position logits [vocab] and transcoder activations
                           [n_layers, n_pos, d_tc] of the unmodified HF model (BOS position zeroed); the
                           resid_mid CLT's as ``clt_resid_activations/{n}``
    manifest.json          parameters, seeds, active-feature statistics, file hashes

Why ``ln_2`` is the identity: the transcoders read the MLP input. circuit-tracer reads TransformerLens'
``blocks.{i}.ln2.hook_normalized``, which is after LN gain and bias when the model is loaded with
``fold_ln=False`` (what circuit-tracer's ``from_pretrained_and_transcoders`` does) but before them with
``fold_ln=True``. With ``ln_2.weight = 1`` and ``ln_2.bias = 0`` both readings equal the HF MLP input,
so the two sides compute the same function however TransformerLens is configured. ``ln_1`` and
``ln_f`` keep random gains and biases so the engine still meets non-trivial norms.

Determinism: every tensor is drawn from its own ``torch.Generator`` seeded from (seed, tensor name), so
the output does not depend on the transformers version's initialisation code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

# Import ``workers`` from the checkout this script lives in, not wherever the editable install points.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet  # noqa: E402
from workers.models.sites import blocks  # noqa: E402

BOS = "<|endoftext|>"
N_POSITIONS = 1024
# --shape: the issue #4 model (default) and one of Gemma 3 270M's shape (issue #15: 18 layers, d_model 640,
# 10 heads, 16,384-feature transcoders, ~50 active per token per layer) in GPT-2's architecture.
# prompt lengths are total tokens, BOS included
SHAPES: dict[str, dict] = {
    "gpt2-4l-d128": {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_tc": 1024, "target_active": 12.0,
                     "lengths": (16, 64, 256)},
    "gpt2-18l-d640": {"n_layers": 18, "d_model": 640, "n_heads": 10, "d_tc": 16384, "target_active": 50.0,
                      "lengths": (64, 256, 1024)},
}
N_LAYERS, D_MODEL, N_HEADS, D_TC = 4, 128, 4, 1024  # set from --shape in main()
PROMPT_LENGTHS: tuple[int, ...] = (16, 64, 256)


def default_out_dir(shape: str = "gpt2-4l-d128") -> Path:
    from workers.settings import get_settings  # here: a bare GPU machine has no pydantic (bench/gpu_check.sh)

    return get_settings().cache_dir / "bench" / shape


def _generator(seed: int, name: str) -> torch.Generator:
    # One stream per tensor name: adding or reordering tensors never changes the others.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _normal(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    return torch.randn(shape, generator=_generator(seed, name)) * std


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: id 0 is BOS/EOS (GPT-2's ``<|endoftext|>``), ids 1.. are ``t1``, ``t2``, ….

    circuit-tracer prepends a special token to prompts that do not start with one; our prompts start
    with id 0, which is special, so both sides see identical ids.
    """
    table = {BOS: 0} | {f"t{i}": i for i in range(1, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token=BOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # re-joins words with single spaces
    tok.add_special_tokens([BOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, unk_token=BOS)


@torch.no_grad()
def build_model(seed: int, vocab_size: int) -> GPT2LMHeadModel:
    """Random GPT-2 (GPT-2's init scales) with ``ln_2`` = identity; see the module docstring."""
    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=N_POSITIONS, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
        # Not a GPT2Config field any more, but the hub's gpt2 config.json has it and TransformerLens'
        # GPT-2 conversion reads it.
        n_ctx=N_POSITIONS,
    )
    model = GPT2LMHeadModel(cfg).eval()
    proj_std = 0.02 / (2 * N_LAYERS) ** 0.5  # GPT-2's scaled init of residual-writing projections
    for name, p in model.named_parameters():  # lm_head.weight is tied to wte and not listed separately
        if ".ln_2." in name:
            p.fill_(1.0 if name.endswith("weight") else 0.0)
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            # Non-trivial LN gains/biases so that frozen norm scales and LN biases matter to the engine.
            p.copy_((1.0 if name.endswith("weight") else 0.0) + _normal(seed, name, tuple(p.shape), 0.1))
        elif name.endswith("c_proj.weight"):
            p.copy_(_normal(seed, name, tuple(p.shape), proj_std))
        elif name.endswith("bias"):
            p.copy_(_normal(seed, name, tuple(p.shape), 0.02))
        elif name == "transformer.wpe.weight":
            p.copy_(_normal(seed, name, tuple(p.shape), 0.01))
        else:
            p.copy_(_normal(seed, name, tuple(p.shape), 0.02))
    return model


def random_prompt(seed: int, name: str, length: int, vocab_size: int) -> list[int]:
    """BOS (id 0) followed by ``length - 1`` uniform ids from 1..vocab_size-1."""
    body = torch.randint(1, vocab_size, (length - 1,), generator=_generator(seed, name))
    return [0, *body.tolist()]


@torch.no_grad()
def mlp_inputs(model: GPT2LMHeadModel, ids: torch.Tensor, resid_mid: bool = False
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """MLP inputs (= ln_2 outputs) per layer, each [batch, pos, d_model], and logits [batch, pos, vocab];
    with ``resid_mid`` the ln_2 inputs (the residual before the pre-MLP norm) instead."""
    captured: list[torch.Tensor | None] = [None] * N_LAYERS
    handles = []
    for b in blocks(model):
        def hook(_m, args, i=b.index):
            captured[i] = args[0].detach()
        handles.append((b.module.ln_2 if resid_mid else b.mlp).register_forward_pre_hook(hook))
    try:
        logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    assert all(c is not None for c in captured)
    return [c for c in captured if c is not None], logits


@torch.no_grad()
def build_transcoders(model: GPT2LMHeadModel, seed: int, vocab_size: int, target_active: float,
                      n_calib_prompts: int, calib_len: int) -> dict[int, dict[str, torch.Tensor]]:
    """Random ReLU transcoders, one per layer, with per-feature ``b_enc`` set so that each feature fires
    on a fraction ``target_active / D_TC`` of the calibration tokens (BOS excluded): about
    ``target_active`` active features per token per layer.

    Returns per layer ``W_enc`` [D_TC, d_model], ``b_enc`` [D_TC], ``W_dec`` [D_TC, d_model],
    ``b_dec`` [d_model] (circuit-tracer's names and orientation, which are also ours).
    """
    return dict(iter_transcoders(model, seed, vocab_size, target_active, n_calib_prompts, calib_len))


@torch.no_grad()
def iter_transcoders(model: GPT2LMHeadModel, seed: int, vocab_size: int, target_active: float,
                     n_calib_prompts: int, calib_len: int):
    """``build_transcoders`` one layer at a time: yields (layer, tensors), so a wide set (``--d-tc 65536``)
    never needs more than one layer in memory."""
    xs, _ = mlp_inputs(model, calibration_prompts(seed, vocab_size, n_calib_prompts, calib_len))
    q = 1.0 - target_active / D_TC
    for layer in range(N_LAYERS):
        W_enc = _normal(seed, f"tc{layer}.W_enc", (D_TC, D_MODEL), 1.0)
        W_enc /= W_enc.norm(dim=-1, keepdim=True)
        # Decoder rows of norm 0.5: outputs of the size of this model's MLP outputs, so that the
        # reconstruction error nodes are not everything.
        W_dec = _normal(seed, f"tc{layer}.W_dec", (D_TC, D_MODEL), 1.0)
        W_dec *= 0.5 / W_dec.norm(dim=-1, keepdim=True)
        b_dec = _normal(seed, f"tc{layer}.b_dec", (D_MODEL,), 0.02)
        b_enc = calibrated_bias(xs[layer], W_enc, q)
        yield layer, {"W_enc": W_enc.contiguous(), "b_enc": b_enc.contiguous(),
                      "W_dec": W_dec.contiguous(), "b_dec": b_dec.contiguous()}


CALIB_CHUNK = 16384  # features calibrated at a time (one chunk up to the 16k shape: its files are unchanged)


def calibrated_bias(xs: torch.Tensor, W_enc: torch.Tensor, q: float) -> torch.Tensor:
    """Per-feature ``b_enc`` [D_TC] putting each feature's pre-activation on inputs ``xs`` [batch, pos, d_model]
    (BOS excluded: circuit-tracer zeroes its features) at 0 on a fraction ``1 − q`` of the tokens; computed
    ``CALIB_CHUNK`` features at a time."""
    x = xs[:, 1:].reshape(-1, D_MODEL)
    b_enc = torch.empty(W_enc.shape[0])
    for c in range(0, W_enc.shape[0], CALIB_CHUNK):
        pre = x @ W_enc[c:c + CALIB_CHUNK].T  # [tokens, chunk]
        if pre.numel() <= 2**24:
            b_enc[c:c + CALIB_CHUNK] = -torch.quantile(pre, q, dim=0)
        else:  # torch.quantile refuses more than 2^24 elements: the nearest order statistic, the k-th
            # smallest = the (n − k + 1)-th largest (topk of a few: far faster than kthvalue, same value)
            k = max(1, min(pre.shape[0], round(q * (pre.shape[0] - 1)) + 1))
            b_enc[c:c + CALIB_CHUNK] = -pre.topk(pre.shape[0] - k + 1, dim=0).values[-1]
        del pre
    return b_enc


def calibration_prompts(seed: int, vocab_size: int, n_calib_prompts: int, calib_len: int) -> torch.Tensor:
    return torch.tensor([random_prompt(seed, f"calibration/{i}", calib_len, vocab_size)
                         for i in range(n_calib_prompts)])


def encode(tc: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ReLU transcoder activations [..., D_TC] of MLP inputs x [..., d_model]."""
    return torch.relu(x @ tc["W_enc"].T + tc["b_enc"])


def write_circuit_tracer_set(tcs: dict[int, dict[str, torch.Tensor]], out: Path) -> None:
    """circuit-tracer's transcoder-set layout (its ``load_transcoders`` reads it with the ``transcoders``
    paths made absolute; see bench/circuit_tracer_ref/run.py)."""
    out.mkdir(parents=True, exist_ok=True)
    for layer, t in tcs.items():
        save_file(t, str(out / f"layer_{layer}.safetensors"))
    lines = [
        "model_kind: transcoder_set",
        "model_name: gpt2",
        "feature_input_hook: ln2.hook_normalized",
        "feature_output_hook: hook_mlp_out",
        "scan: circuit-atlas/bench-gpt2-4l-d128",
        "transcoders:",
        *[f"  - layer_{layer}.safetensors" for layer in sorted(tcs)],
    ]
    (out / "config.yaml").write_text("\n".join(lines) + "\n")


def native_transcoder(layer: int, t: dict[str, torch.Tensor]) -> Dictionary:
    cfg = DictionaryConfig(kind="transcoder", site="mlp", layer=layer, d_in=D_MODEL, d_out=D_MODEL,
                           d_dict=D_TC, activation="relu",
                           extra={"source": "bench/make_bench_model.py",
                                  "circuit_tracer_hooks": ["ln2.hook_normalized", "hook_mlp_out"]})
    d = Dictionary(cfg)
    for k, v in t.items():
        getattr(d, k).data.copy_(v)
    return d


def write_native_set(tcs: dict[int, dict[str, torch.Tensor]], out: Path, model_hash: str) -> str:
    """Our DictionarySet, written by the project's native writer when it is available."""
    dicts = {(layer, "mlp"): native_transcoder(layer, t) for layer, t in tcs.items()}
    ds = DictionarySet(dicts, model_name="bench/gpt2-4l-d128", model_hash=model_hash)
    try:
        from workers.dictionaries.formats.native import save_native
    except ImportError:
        save_native = None
    if save_native is not None:
        save_native(ds, out)
        return "workers.dictionaries.formats.native.save_native"
    # Same layout as the native format's documentation, for checkouts where it has not landed yet.
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for (layer, site), d in ds:
        name = d.cfg.name
        (out / f"{name}.json").write_text(json.dumps(d.cfg.to_dict(), indent=2, sort_keys=True))
        save_file({k: getattr(d, k).detach().contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")},
                  str(out / f"{name}.safetensors"))
        entries.append({"name": name, "layer": layer, "site": site, "kind": d.cfg.kind,
                        "config": f"{name}.json", "weights": f"{name}.safetensors"})
    index = {"format": "circuit-atlas-dictionaries", "version": 1, "model_name": ds.model_name,
             "model_hash": model_hash, "entries": entries}
    (out / "dictionaries.json").write_text(json.dumps(index, indent=2))
    return "bench/make_bench_model.py fallback writer (native layout)"


@torch.no_grad()
def build_clt(tcs: dict[int, dict[str, torch.Tensor]], seed: int, input_site: str = "mlp_in"):
    """A ReLU cross-layer transcoder with the transcoders' encoders (so the activations and the reference
    activations are the same) whose feature of layer ℓ writes its transcoder decoder row to layer ℓ and a
    random row of norm 0.25 to every later layer; ``b_dec`` per output layer from the transcoders. With
    ``input_site="resid_mid"``, ``tcs`` carries encoder biases calibrated on the residual before ``ln_2``."""
    from workers.dictionaries.crosslayer.module import CLTConfig, CrossLayerTranscoder

    layers = []
    for layer in range(N_LAYERS):
        W_dec = torch.empty(D_TC, N_LAYERS - layer, D_MODEL)
        W_dec[:, 0] = tcs[layer]["W_dec"]
        for m in range(layer + 1, N_LAYERS):
            w = _normal(seed, f"clt{layer}->{m}.W_dec", (D_TC, D_MODEL), 1.0)
            W_dec[:, m - layer] = 0.25 * w / w.norm(dim=-1, keepdim=True)
        layers.append({"W_enc": tcs[layer]["W_enc"], "b_enc": tcs[layer]["b_enc"], "W_dec": W_dec,
                       "b_dec": tcs[layer]["b_dec"]})
    cfg = CLTConfig(n_layers=N_LAYERS, d_model=D_MODEL, d_dict=D_TC, activation="relu",
                    input_site=input_site, extra={"source": "bench/make_bench_model.py"})  # type: ignore[arg-type]
    return CrossLayerTranscoder.from_layer_tensors(cfg, layers)


def write_clt(clt, out: Path, model_hash: str, prefix: str = "clt") -> None:
    """The CLT in circuit-tracer's layout (``{prefix}_ct/``; the input hook follows its input site:
    ``mlp.hook_in``, with ln_2 the identity, or ``hook_resid_mid``) and in ours (``{prefix}_dictionaries/``)."""
    from workers.dictionaries.crosslayer.module import CLTDictionarySet
    from workers.dictionaries.formats import save_dictionary_set, write_circuit_tracer_clt

    ds = CLTDictionarySet({}, model_name="bench/gpt2-4l-d128", model_hash=model_hash, clt=clt)
    write_circuit_tracer_clt(ds, out / f"{prefix}_ct", model_name="gpt2")
    save_dictionary_set(ds, out / f"{prefix}_dictionaries")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="output dir (default: <ATLAS_CACHE_DIR>/bench/<shape>)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-4l-d128",
                    help="gpt2-4l-d128 (issue #4, default) or gpt2-18l-d640 (Gemma 3 270M's shape, issue #15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=512, help="vocabulary size incl. BOS (default 512)")
    ap.add_argument("--target-active", type=float, default=None,
                    help="active transcoder features per token per layer to aim for (default: the shape's, 12 / 50)")
    ap.add_argument("--calib-prompts", type=int, default=64)
    ap.add_argument("--calib-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared 2-core machine)")
    ap.add_argument("--d-tc", type=int, default=None,
                    help="transcoder width (default: the shape's; another width writes to <shape>-tc<N>)")
    ap.add_argument("--dictionaries-only", action="store_true",
                    help="write the model, our native transcoders (one layer in memory at a time) and the prompts "
                         "only: no circuit-tracer set, CLT or reference (for wide sets: bench/lazy_memory.py)")
    args = ap.parse_args(argv)
    global N_LAYERS, D_MODEL, N_HEADS, D_TC, PROMPT_LENGTHS
    shape = SHAPES[args.shape]
    N_LAYERS, D_MODEL, N_HEADS, D_TC = shape["n_layers"], shape["d_model"], shape["n_heads"], shape["d_tc"]
    if args.d_tc is not None and args.d_tc != D_TC:
        D_TC = args.d_tc
        args.out = args.out or default_out_dir(f"{args.shape}-tc{D_TC}")
    PROMPT_LENGTHS = shape["lengths"]
    if args.target_active is None:
        args.target_active = shape["target_active"]
    torch.set_num_threads(args.threads)  # 1 by default: shared 2-core machine; this script is not timed
    out = (args.out or default_out_dir(args.shape)).expanduser()
    if args.vocab < 16:
        ap.error(f"--vocab {args.vocab} is too small; use at least 16")
    t0 = time.time()

    model = build_model(args.seed, args.vocab)
    tokenizer = build_tokenizer(args.vocab)
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # transformers 5 records its own "TokenizersBackend" class, which circuit-tracer's transformers 4.x
    # cannot load; PreTrainedTokenizerFast over the same tokenizer.json loads in both.
    tok_cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.pop("backend", None)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    model_hash = sha256_file(model_dir / "model.safetensors")

    if args.dictionaries_only:
        from workers.dictionaries.formats.native import save_native_streaming

        transcoders = iter_transcoders(model, args.seed, args.vocab, args.target_active, args.calib_prompts,
                                       args.calib_len)
        save_native_streaming((native_transcoder(layer, t) for layer, t in transcoders), out / "dictionaries",
                              model_name=f"bench/{args.shape}", model_hash=model_hash)
        prompts = {str(n): random_prompt(args.seed, f"bench/{n}", n, args.vocab) for n in PROMPT_LENGTHS}
        (out / "prompts.json").write_text(json.dumps(prompts))
        manifest = {"what": "random GPT-2 + ReLU transcoders, dictionaries only (bench/README.md)",
                    "shape": args.shape, "seed": args.seed, "vocab_size": args.vocab, "n_layers": N_LAYERS,
                    "d_model": D_MODEL, "n_heads": N_HEADS, "d_transcoder": D_TC, "activation": "relu",
                    "target_active_per_token_per_layer": args.target_active,
                    "calibration": {"prompts": args.calib_prompts, "length": args.calib_len},
                    "prompt_lengths_incl_bos": list(PROMPT_LENGTHS),
                    "hashes": {"model.safetensors": model_hash}}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        print(f"wrote {out} in {time.time() - t0:.1f}s (model, native dictionaries, prompts)")
        return 0
    tcs = build_transcoders(model, args.seed, args.vocab, args.target_active, args.calib_prompts,
                            args.calib_len)
    write_circuit_tracer_set(tcs, out / "transcoders_ct")
    native_writer = write_native_set(tcs, out / "dictionaries", model_hash)
    write_clt(build_clt(tcs, args.seed), out, model_hash)
    # the resid_mid CLT: the same unit encoder rows, biases calibrated on the residual before ln_2
    calib = calibration_prompts(args.seed, args.vocab, args.calib_prompts, args.calib_len)
    resid_calib, _ = mlp_inputs(model, calib, resid_mid=True)
    q = 1.0 - args.target_active / D_TC
    tcs_resid = {layer: {**t, "b_enc": calibrated_bias(resid_calib[layer], t["W_enc"], q).contiguous()}
                 for layer, t in tcs.items()}
    del resid_calib
    write_clt(build_clt(tcs_resid, args.seed, "resid_mid"), out, model_hash, prefix="clt_resid")

    # Benchmark prompts (held out from the calibration prompts), their logits and activations.
    prompts = {str(n): random_prompt(args.seed, f"bench/{n}", n, args.vocab) for n in PROMPT_LENGTHS}
    (out / "prompts.json").write_text(json.dumps(prompts))
    reference: dict[str, torch.Tensor] = {}
    active_stats: dict[str, list[float]] = {}
    for n, ids in prompts.items():
        xs, logits = mlp_inputs(model, torch.tensor([ids]))
        acts = torch.stack([encode(tcs[layer], xs[layer][0]) for layer in range(N_LAYERS)])  # [L, pos, D_TC]
        acts[:, 0] = 0.0  # BOS: circuit-tracer zeroes position 0, and so should the engine
        reference[f"logits_last/{n}"] = logits[0, -1].contiguous()
        reference[f"activations/{n}"] = acts.contiguous()
        rs, _ = mlp_inputs(model, torch.tensor([ids]), resid_mid=True)
        acts_resid = torch.stack([encode(tcs_resid[layer], rs[layer][0]) for layer in range(N_LAYERS)])
        acts_resid[:, 0] = 0.0
        reference[f"clt_resid_activations/{n}"] = acts_resid.contiguous()
        active_stats[n] = [float((acts[layer, 1:] > 0).sum(-1).float().mean()) for layer in range(N_LAYERS)]
    save_file(reference, str(out / "reference.safetensors"))

    manifest = {
        "what": "random GPT-2 + ReLU transcoders for the issue #4 / #15 benchmarks (bench/README.md)",
        "shape": args.shape,
        "seed": args.seed, "vocab_size": args.vocab, "n_layers": N_LAYERS, "d_model": D_MODEL,
        "n_heads": N_HEADS, "d_mlp": 4 * D_MODEL, "n_positions": N_POSITIONS, "d_transcoder": D_TC,
        "activation": "relu", "skip": False, "ln_2": "identity (weight 1, bias 0)",
        "target_active_per_token_per_layer": args.target_active,
        "calibration": {"prompts": args.calib_prompts, "length": args.calib_len},
        "prompt_lengths_incl_bos": list(PROMPT_LENGTHS),
        "active_per_token_per_layer_excl_bos": active_stats,
        "native_writer": native_writer,
        "hashes": {"model.safetensors": model_hash,
                   **{f"transcoders_ct/layer_{i}.safetensors":
                      sha256_file(out / "transcoders_ct" / f"layer_{i}.safetensors") for i in range(N_LAYERS)}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))

    print(f"wrote {out} in {time.time() - t0:.1f}s (dictionaries via {native_writer})")
    print("active transcoder features per token (BOS excluded), per layer:")
    for n, per_layer in active_stats.items():
        print(f"  {n:>4} tokens: " + "  ".join(f"L{i} {v:5.1f}" for i, v in enumerate(per_layer))
              + f"   total per token {sum(per_layer):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
