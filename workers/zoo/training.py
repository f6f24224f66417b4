"""Train the zoo's tiny causal LMs on the CPU with a plain torch loop, and score them per task.

The models are ordinary ``transformers`` classes (GPT2LMHeadModel, LlamaForCausalLM) saved with
``save_pretrained``, so everything downstream loads them as it would any hub model.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from workers.zoo import vocab as V
from workers.zoo.corpus import SCORED_TASKS, TASKS, Example
from workers.zoo.tokenizer import token_ids

Arch = Literal["gpt2", "llama"]
CONTEXT_LENGTH = 128

# The heads the attention hints shape, by hint name: (layer, head) pairs, and where they look.
HINT_HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "previous_token": ((0, 0),),  # from each token to the one before it
    "induction": ((1, 0),),  # from a symbol seen once before to the token that followed it then
    "bracket": ((2, 0),),  # from inside brackets to the innermost open bracket
    # From IOI's last prompt token to the indirect object, on every head of layers 2 and 3. One name
    # mover alone left the other late heads free to carry the subject's name to the logits (S
    # suppression), and then the S positions, not the IO's, held the largest share of IO − S on 19% of
    # held-out prompts; with these 8 heads, 1%. Layer 2 head 0 is the bracket head too: the two hints
    # apply to different tasks.
    "name_mover": tuple((layer, head) for layer in (2, 3) for head in range(4)),
}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and optimisation of one zoo model. Part of the zoo's build key."""

    name: str
    arch: Arch
    n_layer: int
    d_model: int = 128
    n_head: int = 4
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    answer_weight: float = 1.0  # extra loss weight on the answer token (1.0: plain LM loss)
    # GPT-2 only: start the learned position embeddings from (scaled) sinusoids instead of noise. A
    # previous-token head, the first half of an induction circuit, forms far sooner when positions
    # already have relative structure; the embeddings remain ordinary trained parameters.
    sinusoidal_positions: bool = True
    # Token embedding init. Larger than HF's 0.02, so tokens are not drowned by the position codes.
    embedding_std: float = 0.1
    # Attention hints (names from HINT_HEADS): an auxiliary loss, weighted by attention_hint_weight,
    # that pulls each named head's pattern towards the keys its task needs (see ``hint_loss``).
    attention_hints: tuple[str, ...] = ()
    attention_hint_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for hint in self.attention_hints:
            if hint not in HINT_HEADS:
                raise ValueError(f"unknown attention hint {hint!r}; known: {sorted(HINT_HEADS)}")
            for layer, head in HINT_HEADS[hint]:
                if layer >= self.n_layer or head >= self.n_head:
                    raise ValueError(
                        f"the {hint!r} hint shapes layer {layer} head {head}; {self.name!r} has "
                        f"n_layer={self.n_layer}, n_head={self.n_head}"
                    )

    def to_dict(self) -> dict:
        return asdict(self)


def make_model(spec: ModelSpec, vocab_size: int) -> PreTrainedModel:
    """A freshly initialised model for ``spec`` (dropout off: the zoo is about clean circuits)."""
    model = _make_model(spec, vocab_size)
    embeddings = model.get_input_embeddings()
    with torch.no_grad():
        embeddings.weight.normal_(0.0, spec.embedding_std)
        if embeddings.padding_idx is not None:
            embeddings.weight[embeddings.padding_idx].zero_()
    return model


def _make_model(spec: ModelSpec, vocab_size: int) -> PreTrainedModel:
    torch.manual_seed(spec.seed)
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if spec.arch == "gpt2":
        cfg = GPT2Config(
            n_positions=CONTEXT_LENGTH,
            n_embd=spec.d_model,
            n_layer=spec.n_layer,
            n_head=spec.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            **common,
        )
        model = GPT2LMHeadModel(cfg)
        if spec.sinusoidal_positions:
            with torch.no_grad():
                model.transformer.wpe.weight.copy_(_sinusoids(CONTEXT_LENGTH, spec.d_model))
        return model
    if spec.arch == "llama":
        cfg = LlamaConfig(
            hidden_size=spec.d_model,
            intermediate_size=4 * spec.d_model,
            num_hidden_layers=spec.n_layer,
            num_attention_heads=spec.n_head,
            num_key_value_heads=spec.n_head,
            max_position_embeddings=CONTEXT_LENGTH,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            attention_dropout=0.0,
            **common,
        )
        return LlamaForCausalLM(cfg)
    raise ValueError(f"unknown architecture {spec.arch!r}; use 'gpt2' or 'llama'")


def _sinusoids(n_pos: int, d: int, scale: float = 0.1) -> torch.Tensor:
    """Transformer sinusoidal position codes ``[n_pos, d]`` (Vaswani et al. 2017), times ``scale`` so
    they start comparable to the token embeddings (std 0.02 init) rather than swamping them."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    out = torch.zeros(n_pos, d)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out * scale


@dataclass
class EncodedExample:
    ids: list[int]  # full training sequence (BOS … answer … EOS)
    answer_index: int | None  # index in ids of a scored task's answer (predicted from answer_index - 1)
    noise_targets: int = 0  # leading next-token targets with no loss (Example.noise_targets)
    # Per hint name, per position: the key position the hinted head should attend to, or -1 for none.
    hint_keys: dict[str, list[int]] = field(default_factory=dict)


def previous_token_keys(n: int) -> list[int]:
    """Position t - 1 for every position 1 <= t <= n - 2 (those with a next-token target); -1 else."""
    return [t - 1 if 1 <= t <= n - 2 else -1 for t in range(n)]


def induction_keys(ids: Sequence[int], symbol_ids: set[int]) -> list[int]:
    """For each position t holding an induction symbol that occurred exactly once before, at j, with
    j + 1 < t: the position j + 1 (the token that followed it). -1 everywhere else."""
    keys = [-1] * len(ids)
    seen: dict[int, list[int]] = {}
    for t, x in enumerate(ids):
        earlier = seen.setdefault(x, [])
        if x in symbol_ids and len(earlier) == 1 and earlier[0] + 1 < t:
            keys[t] = earlier[0] + 1
        earlier.append(t)
    return keys


def bracket_keys(tokens: Sequence[str]) -> list[int]:
    """For each position at which a bracket is open (after reading its token): the position of the
    innermost open bracket, which the next closing bracket must match. -1 everywhere else."""
    keys = [-1] * len(tokens)
    stack: list[int] = []
    for t, tok in enumerate(tokens):
        if tok in V.OPEN_BRACKETS:
            stack.append(t)
        elif tok in V.CLOSE_BRACKETS and stack:
            stack.pop()
        if stack:
            keys[t] = stack[-1]
    return keys


def name_mover_keys(ex: Example, n: int) -> list[int]:
    """IOI: the indirect object's position, from the last prompt position (where the answer is
    predicted). -1 everywhere else, and everywhere in other tasks."""
    keys = [-1] * n
    if ex.task == "ioi":
        keys[len(ex.prompt_tokens) - 1] = ex.source_positions[0]
    return keys


def encode_examples(
    examples: Sequence[Example], tokenizer, hints: Sequence[str] = ()
) -> list[EncodedExample]:
    """Token ids, loss-weight facts and, for each of ``hints``, the hinted head's keys."""
    out = []
    vocab = tokenizer.get_vocab()
    symbol_ids = {vocab[s] for s in V.induction_symbols()}
    key_makers: dict[str, Callable[[Example, list[str], list[int]], list[int]]] = {
        "previous_token": lambda ex, tokens, ids: previous_token_keys(len(ids)),
        "induction": lambda ex, tokens, ids: induction_keys(ids, symbol_ids),
        "bracket": lambda ex, tokens, ids: bracket_keys(tokens),
        "name_mover": lambda ex, tokens, ids: name_mover_keys(ex, len(ids)),
    }
    assert key_makers.keys() == HINT_HEADS.keys()
    for ex in examples:
        tokens = ex.training_tokens()
        ids = token_ids(vocab, tokens)
        if len(ids) > CONTEXT_LENGTH:
            raise ValueError(f"example of {len(ids)} tokens exceeds the context length {CONTEXT_LENGTH}")
        scored = ex.task in SCORED_TASKS  # filler's "answer" is just its full stop: no extra weight
        out.append(
            EncodedExample(
                ids,
                len(ex.prompt_tokens) if scored else None,
                ex.noise_targets,
                {hint: key_makers[hint](ex, tokens, ids) for hint in hints},
            )
        )
    return out


def batches(encoded: Sequence[EncodedExample], batch_size: int, seed: int) -> Iterator[list[EncodedExample]]:
    """Endless shuffled batches, grouped by length in small windows: little compute goes to padding, yet
    each batch still mixes tasks (task lengths differ, and single-task batches make training jumpy)."""
    rng = random.Random(seed)
    order = list(range(len(encoded)))
    group = batch_size * 4
    while True:
        rng.shuffle(order)
        for g in range(0, len(order) - group + 1, group):
            chunk = sorted(order[g : g + group], key=lambda i: len(encoded[i].ids))
            bs = [chunk[i : i + batch_size] for i in range(0, group, batch_size)]
            rng.shuffle(bs)
            for b in bs:
                yield [encoded[i] for i in b]


@dataclass
class Batch:
    ids: torch.Tensor  # [batch, seq] right-padded input ids
    targets: torch.Tensor  # [batch, seq] next-token targets, -100 = ignore
    weights: torch.Tensor  # [batch, seq] per-token loss weights
    hint_keys: dict[str, torch.Tensor]  # per hint: [batch, seq] key position, -1 = none


def collate(batch: Sequence[EncodedExample], answer_weight: float) -> Batch:
    """Right padding needs no attention mask: causal attention never lets a real token see the
    padding after it."""
    seq = max(len(e.ids) for e in batch)
    ids = torch.zeros(len(batch), seq, dtype=torch.long)
    targets = torch.full((len(batch), seq), -100, dtype=torch.long)
    weights = torch.zeros(len(batch), seq)
    hints = batch[0].hint_keys.keys()
    if any(e.hint_keys.keys() != hints for e in batch):
        raise ValueError("every example of a batch must carry the same hints")
    keys = {hint: torch.full((len(batch), seq), -1, dtype=torch.long) for hint in hints}
    for r, e in enumerate(batch):
        n = len(e.ids)
        ids[r, :n] = torch.tensor(e.ids)
        targets[r, : n - 1] = ids[r, 1:n]
        weights[r, e.noise_targets : n - 1] = 1.0
        if e.answer_index is not None:
            weights[r, e.answer_index - 1] = answer_weight
        for hint, k in e.hint_keys.items():
            keys[hint][r, :n] = torch.tensor(k)
    return Batch(ids, targets, weights, keys)


def hinted_attention(attentions: Sequence[torch.Tensor], batch: Batch, hint: str) -> torch.Tensor:
    """The attention each of the ``hint``'s heads puts on its intended key, at every query that has one:
    [n_queries * n_heads]."""
    keys = batch.hint_keys[hint]
    has_key = keys >= 0
    on_key = [
        attentions[layer][:, head][has_key].gather(1, keys[has_key][:, None]).squeeze(1)
        for layer, head in HINT_HEADS[hint]
    ]
    return torch.cat(on_key)


def hint_loss(attentions: Sequence[torch.Tensor], batch: Batch) -> torch.Tensor:
    """Sum over the batch's hints of the mean negative log attention of the hinted heads on their keys.

    The zoo trains on a CPU budget of a few thousand steps. Left alone, a tiny model sits on the
    induction plateau longer than that (it copies "some earlier symbol" and stays near 20%), because
    neither half of the circuit pays off before the other exists; and it solves brackets and IOI with
    heads that spread their attention over every bracket of a type or every name, so no one position
    holds the answer's information. The hints name the heads' jobs (``HINT_HEADS``): what the heads
    read and write (their OV circuits, and every other weight) is learnt from the language-model loss
    alone; the hints only say where to look.
    """
    loss = torch.zeros(())
    for hint in batch.hint_keys:
        on_key = hinted_attention(attentions, batch, hint)
        if on_key.numel():
            loss = loss - torch.log(on_key + 1e-6).mean()
    return loss


@dataclass
class TrainResult:
    model: PreTrainedModel
    seconds: float
    final_loss: float  # mean language-model loss of the last 50 steps (hint loss not included)
    losses: list[float]  # language-model loss per step


def train_model(
    spec: ModelSpec,
    train: Sequence[Example],
    tokenizer,
    progress: Callable[[int, float, PreTrainedModel], None] | None = None,
) -> TrainResult:
    """Train a fresh model on ``train``; ``progress(step, loss, model)`` is called after every step."""
    model = make_model(spec, len(tokenizer.get_vocab()))
    hinted = bool(spec.attention_hints) and spec.attention_hint_weight > 0
    attn_implementation = model.config._attn_implementation
    if hinted:  # attention weights are returned only by the eager implementation
        model.config._attn_implementation = "eager"
    encoded = encode_examples(train, tokenizer, spec.attention_hints if hinted else ())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        # Linear warm-up, then cosine decay to 5% of the peak.
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    it = batches(encoded, spec.batch_size, spec.seed)
    for step in range(spec.steps):
        batch = collate(next(it), spec.answer_weight)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=batch.ids, output_attentions=hinted)
        per_tok = F.cross_entropy(
            out.logits.flatten(0, 1), batch.targets.flatten(), reduction="none", ignore_index=-100
        )
        w = batch.weights.flatten()
        lm_loss = (per_tok * w).sum() / w.sum()
        loss = lm_loss
        if hinted:
            loss = loss + spec.attention_hint_weight * hint_loss(out.attentions, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(lm_loss.item())
        if progress is not None:
            progress(step, losses[-1], model)
    model.config._attn_implementation = attn_implementation
    model.eval()
    return TrainResult(model, time.perf_counter() - t0, sum(losses[-50:]) / min(50, len(losses)), losses)


@torch.no_grad()
def evaluate(model: PreTrainedModel, examples: Sequence[Example], tokenizer, batch_size: int = 128) -> dict:
    """Per-task answer accuracy (argmax of the logits at the last prompt position == answer) and, for
    IOI, the mean logit difference IO − S.

    Returns ``{"accuracy": {task: float}, "answer_nll": {task: float}, "n": {task: int},
    "min_scored_accuracy": float, "ioi_logit_diff": float}``.
    """
    model.eval()
    vocab = tokenizer.get_vocab()
    correct = {t: 0 for t in TASKS}
    count = {t: 0 for t in TASKS}
    nll = {t: 0.0 for t in TASKS}
    logit_diffs: list[float] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        seqs = [token_ids(vocab, ex.prompt_tokens) for ex in chunk]
        seq = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), seq), vocab[V.PAD], dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
        logits = model(input_ids=ids).logits  # [batch, seq, vocab]
        last = logits[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]  # [batch, vocab]
        pred = last.argmax(-1)
        logp = last.log_softmax(-1)
        for r, ex in enumerate(chunk):
            count[ex.task] += 1
            nll[ex.task] -= logp[r, vocab[ex.answer]].item()
            correct[ex.task] += int(pred[r].item() == vocab[ex.answer])
            if ex.s_name is not None:
                logit_diffs.append((last[r, vocab[ex.answer]] - last[r, vocab[ex.s_name]]).item())
    acc = {t: correct[t] / count[t] for t in TASKS if count[t]}
    return {
        "accuracy": acc,
        "answer_nll": {t: nll[t] / count[t] for t in TASKS if count[t]},
        "n": {t: count[t] for t in TASKS if count[t]},
        "min_scored_accuracy": min((acc[t] for t in SCORED_TASKS if t in acc), default=float("nan")),
        "ioi_logit_diff": sum(logit_diffs) / len(logit_diffs) if logit_diffs else float("nan"),
    }


def save_model(model: PreTrainedModel, tokenizer, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
