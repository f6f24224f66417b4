"""Checks a submitted corpus before anything is written: every problem is a domain error (``workers/errors.py``)
naming the request field (``loc``), so the API answers 4xx and the database stays unchanged.

Targets use the engine's syntax (``workers.engine.targets.parse_target``): ``top``, ``logit:TOKEN[@POS]``,
``diff:GOOD,BAD[@POS]``, ``feat:L2.mlp:p5:f123``; objects ``{"logit": "Mary"}``, ``{"diff": ["Mary", "John"]}``
and ``{"feature": "L2.mlp:p5:f123"}`` are accepted as spellings of the same.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from workers.errors import InputTooLarge, InvalidInput, MalformedInput
from workers.pipeline.config import PipelineSettings


@dataclass
class PromptSpec:
    text: str
    targets: list[str] = field(default_factory=list)


@dataclass
class ValidatedCorpus:
    model_id: str
    dictionary_set_id: str
    name: str
    settings: dict[str, Any]
    prompts: list[PromptSpec]  # duplicates removed, submission order kept
    tokens: list[list[int]]  # token ids per kept prompt
    duplicates: list[dict[str, int]]  # {"index": i, "duplicate_of": j}: indices into the submitted list


def decode_utf8(raw: bytes, loc: tuple = ("body",)) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MalformedInput(loc, f"the request body is not valid UTF-8: byte {exc.start} (line {line}) "
                                 f"is {raw[exc.start:exc.start + 1]!r}; send UTF-8 text") from None


def check_size(n_bytes: int, cfg: PipelineSettings) -> None:
    if n_bytes > cfg.max_upload_bytes:
        raise InputTooLarge(("body",), f"the upload is {n_bytes:,} bytes; the limit is {cfg.max_upload_bytes:,} "
                                       "(ATLAS_PIPELINE_MAX_UPLOAD_BYTES): split the corpus")


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedInput(("body",), f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                       f"column {exc.colno}") from None


def parse_jsonl(text: str) -> list[Any]:
    """One prompt per non-blank line: a JSON string or an object {"text": ..., "targets": [...]}."""
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise MalformedInput(("body", f"line {number}"), f"line {number} is not valid JSON: {exc.msg}") from None
    return items


_TARGET = re.compile(r"^(top|logit:.+|diff:[^,]+,.+|feat:L\d+\.(attn|mlp):p\d+:f\d+)$")


def normalise_target(t: Any, loc: tuple) -> str:
    if isinstance(t, dict) and len(t) == 1:
        (k, v), = t.items()
        if k == "logit" and isinstance(v, str | int):
            t = f"logit:{v}"
        elif k == "diff" and isinstance(v, list) and len(v) == 2:
            t = f"diff:{v[0]},{v[1]}"
        elif k == "feature" and isinstance(v, str):
            t = f"feat:{v.removeprefix('feat:')}"
    if not isinstance(t, str) or not _TARGET.fullmatch(t):
        raise InvalidInput(loc, f"target {t!r} is not one of: 'top', 'logit:TOKEN[@POS]', 'diff:GOOD,BAD[@POS]', "
                                 "'feat:L2.mlp:p5:f123', {'logit': TOKEN}, {'diff': [GOOD, BAD]}, {'feature': 'L2.mlp:p5:f123'}")
    return t


def _check_target_tokens(target: str, tokenizer, n_tokens: int, loc: tuple) -> None:
    """Tokens named by logit/diff targets must be single tokens; positions inside the prompt."""
    if target == "top" or target.startswith("feat:"):
        if target.startswith("feat:"):
            pos = int(target.split(":p", 1)[1].split(":", 1)[0])
            if pos >= n_tokens:
                raise InvalidInput(loc, f"target {target!r} is at position {pos} but the prompt has {n_tokens} tokens")
        return
    body = target.split(":", 1)[1]
    if "@" in body:
        body, p = body.rsplit("@", 1)
        try:
            pos = int(p)
        except ValueError:
            raise InvalidInput(loc, f"target {target!r}: position {p!r} is not an integer") from None
        if not -n_tokens <= pos < n_tokens:
            raise InvalidInput(loc, f"target {target!r}: position {pos} is outside the prompt ({n_tokens} tokens)")
    for tok in body.split(",") if target.startswith("diff:") else [body]:
        if tok.lstrip("-").isdigit():
            continue
        if tokenizer is None:
            raise InvalidInput(loc, f"target token {tok!r} needs a tokenizer; the model has none: use token ids")
        ids = tokenizer.encode(tok, add_special_tokens=False)
        if len(ids) != 1:
            raise InvalidInput(loc, f"target token {tok!r} is {len(ids)} tokens; a target token must be exactly one")


def validate_prompts(items: list[Any], tokenizer, n_ctx: int | None, cfg: PipelineSettings,
                     loc: tuple = ("body", "prompts")) -> tuple[list[PromptSpec], list[list[int]], list[dict[str, int]]]:
    """Normalise, check and deduplicate the prompts (exact (text, targets) repeats)."""
    if not items:
        raise InvalidInput(loc, "the corpus is empty: submit at least one prompt")
    if len(items) > cfg.max_prompts:
        raise InputTooLarge(loc, f"the corpus has {len(items):,} prompts; the limit is {cfg.max_prompts:,} "
                                 "(ATLAS_PIPELINE_MAX_PROMPTS)")
    limit = min(cfg.max_prompt_tokens, n_ctx) if n_ctx else cfg.max_prompt_tokens
    limit_name = "the model's context" if n_ctx and n_ctx <= cfg.max_prompt_tokens else \
        "the configured limit (ATLAS_PIPELINE_MAX_PROMPT_TOKENS)"
    kept: list[PromptSpec] = []
    tokens: list[list[int]] = []
    duplicates: list[dict[str, int]] = []
    seen: dict[tuple, int] = {}
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise InvalidInput((*loc, i), "each prompt is a string or an object with a string 'text'")
        unknown = set(item) - {"text", "targets"}
        if unknown:
            raise InvalidInput((*loc, i, sorted(unknown)[0]), f"unknown prompt field(s) {sorted(unknown)}; "
                                                               "allowed: text, targets")
        text = item["text"]
        if not text.strip():
            raise InvalidInput((*loc, i, "text"), "the prompt text is empty")
        raw_targets = item.get("targets") or []
        if not isinstance(raw_targets, list):
            raise InvalidInput((*loc, i, "targets"), "targets must be a list")
        targets = [normalise_target(t, (*loc, i, "targets", j)) for j, t in enumerate(raw_targets)]
        if tokenizer is not None:
            ids = list(tokenizer(text)["input_ids"])
        else:
            raise InvalidInput(("body", "model"), "the model has no tokenizer; text prompts need one")
        if len(ids) > limit:
            raise InvalidInput((*loc, i, "text"), f"prompt {i} has {len(ids):,} tokens; the limit is {limit:,} "
                                                   f"({limit_name})")
        if not ids:
            raise InvalidInput((*loc, i, "text"), f"prompt {i} has no tokens")
        for j, t in enumerate(targets):
            _check_target_tokens(t, tokenizer, len(ids), (*loc, i, "targets", j))
        key = (text, tuple(targets))
        if key in seen:
            duplicates.append({"index": i, "duplicate_of": seen[key]})
            continue
        seen[key] = i
        kept.append(PromptSpec(text, targets))
        tokens.append([int(t) for t in ids])
    return kept, tokens, duplicates
