"""Submit a corpus: a JSON body (``CorpusRequest``) or a JSONL upload (``application/x-ndjson``, one prompt per
line, the other fields as query parameters). Everything is validated before anything is written; each
problem is a 4xx naming the field (``detail[].loc``). Submitting needs an API key with the ``write`` scope
(checked first: 401/403 before any validation); the key becomes the corpus' ``owner_key_id``.

Listing (``GET /corpora``, ``GET /corpora/{id}``) is public like every other read (service/query/corpora.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.api.deps import DatabaseDep, DriverDep, PipelineDep, tokenizer_for
from service.api.pagination import Offset, paginate
from service.auth import ApiKey, key_responses, require_scope
from service.query import corpora as q
from service.schemas.corpora import (
    CorpusAccepted,
    CorpusPageOut,
    CorpusRequest,
    CorpusSettings,
    CorpusSummaryOut,
)
from workers.errors import InvalidInput, UnsupportedInputType
from workers.pipeline import registry, validation
from workers.pipeline.submit import SubmissionFailed, submit_corpus
from workers.pipeline.validation import ValidatedCorpus

router = APIRouter(prefix="/corpora", tags=["corpora"])

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/json-lines")
_SETTINGS_PARAMS = ("prune", "node_threshold", "edge_threshold", "max_features", "max_feature_nodes", "batch_size")


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined: a schema placed in an OpenAPI document by hand cannot
    keep them (its ``#/$defs/...`` references would point at the document's root, where they do not resolve)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline({**defs[ref.rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


def _request_from_jsonl(text: str, params: dict[str, str]) -> dict[str, Any]:
    unknown = set(params) - {"model", "dictionary_set", "name", *_SETTINGS_PARAMS}
    if unknown:
        raise InvalidInput(("query", sorted(unknown)[0]), f"unknown query parameter(s) {sorted(unknown)}")
    given = {k: params[k] for k in _SETTINGS_PARAMS if k in params}
    try:  # query parameters are text: "5" is read as 5 here, while a JSON body's settings are strict
        settings = CorpusSettings.model_validate(given, strict=False).model_dump(exclude_unset=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in errors]) from None
    return {"model": params.get("model"), "dictionary_set": params.get("dictionary_set"),
            "name": params.get("name", ""), "prompts": validation.parse_jsonl(text), "settings": settings}


def validate_request(driver, req: CorpusRequest, tokenizer_of, cfg, database: str | None) -> ValidatedCorpus:  # noqa: ANN001
    """Registry lookups + prompt checks (plain function; the route runs it in a thread)."""
    model = registry.get_model(driver, req.model, database, field="model")
    dset = registry.get_dictionary_set(driver, req.dictionary_set, database, field="dictionary_set")
    if dset.model_id != model.model_id:
        raise InvalidInput(("body", "dictionary_set"), f"dictionary set {dset.dictionary_set_id!r} is registered for "
                                                        f"model {dset.model_id!r}, not {model.model_id!r}")
    items = [p if isinstance(p, str) else p.model_dump() for p in req.prompts]
    prompts, tokens, dups = validation.validate_prompts(items, tokenizer_of(model), model.n_ctx, cfg)
    return ValidatedCorpus(model.model_id, dset.dictionary_set_id, req.name, req.settings.model_dump(), prompts,
                           tokens, dups)


@router.post("", response_model=CorpusAccepted, status_code=202,
             responses=key_responses("write", {400: {}, 413: {}, 422: {}, 503: {}}),
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": inlined_schema(CorpusRequest)},
                 "application/x-ndjson": {"schema": {"type": "string"}}}, "required": True}})
async def submit(request: Request, key: Annotated[ApiKey, Depends(require_scope("write"))],  # noqa: ANN201
                 cfg: PipelineDep, driver: DriverDep, db: DatabaseDep):
    """Validate and queue a corpus: one job, one task per (deduplicated) prompt."""
    from workers.tasks import enqueue_prompt

    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        validation.check_size(int(declared), cfg)  # refuse before reading a huge body
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():  # a chunked body has no Content-Length: count while it arrives
        received += len(chunk)
        validation.check_size(received, cfg)
        chunks.append(chunk)
    text = validation.decode_utf8(b"".join(chunks))
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype in JSONL_TYPES:
        payload = _request_from_jsonl(text, dict(request.query_params))
    elif ctype == "application/json":
        payload = validation.parse_json(text)
    else:
        raise UnsupportedInputType(("header", "content-type"), f"unsupported content type {ctype!r}: send "
                                                                "application/json or application/x-ndjson")
    try:
        req = CorpusRequest.model_validate(payload)
    except ValidationError as exc:  # the body is read by hand (streamed, size-checked): FastAPI's 422, by hand
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    corpus = await run_in_threadpool(validate_request, driver, req, lambda m: tokenizer_for(request, m), cfg, db)
    try:
        created = await run_in_threadpool(submit_corpus, driver, corpus, enqueue_prompt, db,
                                          owner_key_id=key.key_id)
    except SubmissionFailed as exc:
        raise HTTPException(503, str(exc)) from None
    return CorpusAccepted(corpus_id=created.corpus_id, job_id=created.job_id, n_prompts=len(created.prompt_ids),
                          duplicates=corpus.duplicates, job_url=f"/jobs/{created.job_id}")


@router.get("", response_model=CorpusPageOut)
def list_corpora(driver: DriverDep, db: DatabaseDep, offset: Offset = 0,
                 limit: int = Query(50, ge=1, le=1000)) -> CorpusPageOut:
    """Corpora, newest first, each with its model, dictionary set, prompt and graph counts and its job's
    state and done/failed/total. Public, like every read."""
    return CorpusPageOut(**paginate(lambda o, n: q.list_corpora(driver, o, n, database=db), offset, limit))


@router.get("/{corpus_id}", response_model=CorpusSummaryOut, responses={404: {"description": "Unknown corpus"}})
def get_corpus(corpus_id: str, driver: DriverDep, db: DatabaseDep) -> CorpusSummaryOut:
    """One corpus with its job's progress counters."""
    return CorpusSummaryOut(**q.get_corpus(driver, corpus_id, database=db))
