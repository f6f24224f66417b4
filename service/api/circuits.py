"""Stored graphs: list them, read a circuit with read-time pruning (JSON or Neuronpedia), strongest paths.

A complete graph never changes, so its reads carry an ETag (graph id + completion time + the query) and
``Cache-Control: public, max-age=3600``; ``If-None-Match`` gets a 304. A circuit also shows feature labels, which
do change: its ETag includes the newest label change and it is revalidated on every read (``max-age=0``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from service.api.analyses import enqueue_analysis
from service.api.deps import DatabaseDep, DriverDep
from service.api.pagination import Offset, paginate
from service.auth import ApiKey, key_responses, require_scope
from service.query import circuits as q
from service.query.labels import labels_version
from service.query.paths import MAX_HOPS_LIMIT, graph_paths
from service.schemas.analyses import AnalysisOut, AnalysisRequest
from service.schemas.circuits import CircuitOut, GraphPageOut, LocalCircuitRequest, PathsOut
from workers.neuronpedia import NeuronpediaGraph

router = APIRouter(prefix="/graphs", tags=["circuits"])


def cached_json(request: Request, payload: object, seed: str, max_age_s: int = 3600) -> Response:
    """JSON with an ETag derived from ``seed`` (the immutable graph's identity plus the query)."""
    etag = '"' + hashlib.sha256(seed.encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": _cache_control(max_age_s)}
    inm = request.headers.get("if-none-match", "")
    if etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*":
        return Response(status_code=304, headers=headers)
    return JSONResponse(payload, headers=headers)


def _cache_control(max_age_s: int) -> str:
    return f"public, max-age={max_age_s}" + (", must-revalidate" if max_age_s == 0 else "")


@router.get("", response_model=GraphPageOut)
def list_graphs(driver: DriverDep, db: DatabaseDep, corpus_id: str | None = None,
                model: str | None = Query(None, description="Only graphs of this model."),
                text: str | None = Query(None, max_length=500, description="Only graphs whose prompt contains this "
                                                                           "(case-insensitive)."),
                offset: Offset = 0, limit: int = Query(50, ge=1, le=1000)) -> GraphPageOut:
    """Complete graphs (optionally of one corpus or model, or by prompt text), ordered by graph_id, each with its
    prompt's text and its targets."""
    return GraphPageOut(**paginate(lambda o, n: q.list_graphs(driver, corpus_id, o, n, model=model, text=text or None,
                                                              database=db), offset, limit))


@router.get("/{graph_id}/circuit", response_model=CircuitOut | NeuronpediaGraph,
            responses={200: {"description": "The circuit (CircuitOut), or Neuronpedia graph JSON with "
                                            "format=neuronpedia (NeuronpediaGraph: circuit-tracer's graph model, "
                                            "workers/neuronpedia.py)."}, 304: {"description": "Not modified"},
                       404: {"description": "Unknown graph or target node"}})
def get_circuit(
    request: Request, graph_id: str, driver: DriverDep, db: DatabaseDep,
    node_threshold: float = Query(0.0, ge=0, description="Keep nodes with influence >= this."),
    edge_threshold: float = Query(0.0, ge=0, description="Keep edges with |w| >= this."),
    max_nodes: int = Query(500, ge=0, le=100_000, description="Top-k nodes by influence (besides keep_kinds)."),
    max_edges: int = Query(5000, ge=0, le=1_000_000, description="Top-k edges by |w|."),
    keep_kinds: list[str] = Query(list(q.DEFAULT_KEEP_KINDS), description="Node kinds always kept."),
    target: str | None = Query(None, description="A node id: only its upstream cone (local circuit of a "
                                                 "feature, or end-to-end circuit of a logit/target).",
                               examples=["feat:L1.mlp:p4:f17"]),
    format: Literal["json", "neuronpedia"] = "json",
) -> Response:
    """A stored graph's circuit, pruned at read time (rules: service/query/circuits.py)."""
    pruning = q.Pruning(node_threshold, edge_threshold, max_nodes, max_edges, tuple(keep_kinds), target)
    graph = q.get_graph(driver, graph_id, database=db)
    seed = json.dumps([graph_id, str(graph.get("completed_at")), format, pruning.__dict__,
                       labels_version(driver, database=db)], default=str, sort_keys=True)
    etag = '"' + hashlib.sha256(seed.encode()).hexdigest()[:32] + '"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": _cache_control(0)})
    c = q.circuit(driver, graph_id, pruning, database=db)
    if format == "neuronpedia":
        payload: object = q.to_neuronpedia(c)
    else:
        payload = CircuitOut(graph=c.graph, nodes=c.nodes, edges=c.edges, pruning={**pruning.__dict__,
                             "keep_kinds": list(pruning.keep_kinds)}, stats=c.stats).model_dump(mode="json")
    return cached_json(request, payload, seed, max_age_s=0)


@router.get("/{graph_id}/paths", response_model=PathsOut, responses={404: {"description": "Unknown graph"}})
def get_paths(
    request: Request, graph_id: str, driver: DriverDep, db: DatabaseDep,
    source: str = Query(..., examples=["emb:p2"]), target: str = Query(..., examples=["logit:p7:t42"]),
    max_hops: int = Query(4, ge=1, le=MAX_HOPS_LIMIT), beam: int = Query(64, ge=1, le=4096),
    k: int = Query(10, ge=1, le=1000), fanout: int = Query(32, ge=1, le=1000),
    min_abs_w: float = Query(0.0, ge=0),
) -> Response:
    """Strongest paths source -> target in one graph (beam search; service/query/paths.py)."""
    graph = q.get_graph(driver, graph_id, database=db)
    paths = graph_paths(driver, graph_id, source, target, max_hops=max_hops, beam=beam, k=k, fanout=fanout,
                        min_abs_w=min_abs_w, database=db)
    payload = {"source": source, "target": target, "paths": [p.to_dict() for p in paths]}
    seed = json.dumps([graph_id, str(graph.get("completed_at")), "paths", source, target, max_hops, beam, k, fanout,
                       min_abs_w])
    return cached_json(request, payload, seed)


@router.post("/{graph_id}/local-circuits", response_model=AnalysisOut, status_code=202,
             responses=key_responses("write", {404: {"description": "Unknown graph"}}))
def request_local_circuit(graph_id: str, body: LocalCircuitRequest,
                          key: Annotated[ApiKey, Depends(require_scope("write"))], driver: DriverDep,
                          db: DatabaseDep) -> AnalysisOut:
    """Queue a worker to compute a new local circuit of one feature node of this graph's prompt; when the job
    is done its result names the new graph (``<graph_id>~<node_id>``), readable with GET .../circuit."""
    q.get_graph(driver, graph_id, database=db)
    params = {"graph_id": graph_id, "node_id": body.node_id, "prune": body.prune}
    return enqueue_analysis(driver, db, AnalysisRequest(kind="local_circuit", params=params), key)
