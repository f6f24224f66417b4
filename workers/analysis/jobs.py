"""Analysis jobs: one ``(:Analysis {analysis_id, kind, params, status, result, error, owner_key_id})`` node
per request; the Celery task (workers/analysis_tasks.py) moves it queued -> running -> done | failed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from neo4j import Driver

from workers.analysis import cross_prompt


def _graphs(driver: Driver, p: dict, database: str | None) -> list[str]:
    return cross_prompt.select_graphs(driver, graph_ids=p.get("graph_ids"), corpus_id=p.get("corpus_id"),
                                      prompt_ids=p.get("prompt_ids"), database=database)


def _recurring(driver: Driver, p: dict, db: str | None) -> dict:
    return cross_prompt.recurring_features(driver, _graphs(driver, p, db), min_influence=p.get("min_influence", 0.0),
                                           min_graphs=p.get("min_graphs", 1), limit=p.get("limit", 100), database=db)


def _consensus(driver: Driver, p: dict, db: str | None) -> dict:
    return cross_prompt.consensus_circuit(driver, _graphs(driver, p, db), min_fraction=p.get("min_fraction", 0.5),
                                          min_influence=p.get("min_influence", 0.0),
                                          min_abs_w=p.get("min_abs_w", 0.0), database=db)


def _difference(driver: Driver, p: dict, db: str | None) -> dict:
    return cross_prompt.circuit_difference(driver, p["graph_a"], p["graph_b"],
                                           min_influence=p.get("min_influence", 0.0), database=db)


def _cluster(driver: Driver, p: dict, db: str | None) -> dict:
    return cross_prompt.cluster_prompts(driver, _graphs(driver, p, db), threshold=p.get("threshold", 0.5),
                                        min_influence=p.get("min_influence", 0.0), database=db)


def _attribution_shares(driver: Driver, p: dict, db: str | None) -> dict:
    from workers.analysis.attribution_shares import attribution_shares

    return attribution_shares(driver, _graphs(driver, p, db), target=int(p.get("target", 0)),
                              top_features=int(p.get("top_features", 20)),
                              corpus_features=int(p.get("corpus_features", 50)), database=db)


def _virtual_weights(driver: Driver, p: dict, db: str | None) -> dict:
    from workers.analysis.virtual_weights import compute_and_store_for_registered

    if not p.get("corpus_id"):
        raise ValueError("virtual_weights needs corpus_id: the norm scale is its dataset average over that corpus' "
                         "prompts (DESIGN.md §2)")
    return compute_and_store_for_registered(driver, p["dictionary_set_id"], p["corpus_id"], top_k=p.get("top_k", 16),
                                            max_tokens=p.get("max_tokens", 100_000), database=db)


def _local_circuit(driver: Driver, p: dict, db: str | None) -> dict:
    from workers.analysis.local_circuits import compute_local_circuit

    return compute_local_circuit(driver, p["graph_id"], p["node_id"], prune=bool(p.get("prune", False)), database=db)


def _qk_pairs(driver: Driver, p: dict, db: str | None) -> dict:
    from workers.analysis.qk import compute_qk_pairs

    return compute_qk_pairs(driver, p["graph_id"], layer=p.get("layer"), head=p.get("head"),
                            query_position=p.get("query_position"), key_position=p.get("key_position"),
                            top_k=int(p.get("top_k", 20)), from_circuit=bool(p.get("from_circuit", False)),
                            top_k_heads=int(p.get("top_k_heads", 3)), database=db)


def _interventions(driver: Driver, p: dict, db: str | None) -> dict:
    from workers.analysis.interventions import compute_interventions

    return compute_interventions(driver, p["graph_id"], list(p.get("node_ids") or []), str(p.get("mode", "ablate")),
                                 p.get("value"), top_k=int(p.get("top_k", 10)), database=db)


# Every kind of analysis, by name. The last three need the model (a worker recomputes the graph's prompt); QK
# pairs and interventions are queued by their own routes (POST /graphs/{id}/qk, /interventions), which check
# their parameters, and are not kinds of the generic POST /analyses (service.schemas.analyses.AnalysisKind).
ANALYSES: dict[str, Callable[[Driver, dict, str | None], dict]] = {
    "recurring_features": _recurring,
    "consensus_circuit": _consensus,
    "circuit_difference": _difference,
    "cluster_prompts": _cluster,
    "attribution_shares": _attribution_shares,
    "virtual_weights": _virtual_weights,
    "local_circuit": _local_circuit,
    "qk_pairs": _qk_pairs,
    "interventions": _interventions,
}


def create_analysis(driver: Driver, kind: str, params: dict, owner_key_id: str | None, *,
                    database: str | None = None) -> str:
    if kind not in ANALYSES:
        raise ValueError(f"unknown analysis {kind!r}; choose from {', '.join(sorted(ANALYSES))}")
    analysis_id = f"an-{uuid.uuid4().hex[:16]}"
    driver.execute_query(
        "CREATE (:Analysis {analysis_id: $id, kind: $kind, params: $params, status: 'queued', created_at: $now, "
        "owner_key_id: $owner})",
        id=analysis_id, kind=kind, params=json.dumps(params, sort_keys=True), now=time.time(), owner=owner_key_id,
        database_=database,
    )
    return analysis_id


def get_analysis(driver: Driver, analysis_id: str, *, database: str | None = None) -> dict | None:
    records, _, _ = driver.execute_query("MATCH (a:Analysis {analysis_id: $id}) RETURN a {.*} AS a", id=analysis_id,
                                         database_=database, routing_="r")
    if not records:
        return None
    a = dict(records[0]["a"])
    a["params"] = json.loads(a["params"])
    a["result"] = json.loads(a["result"]) if a.get("result") else None
    return a


def fail_analysis(driver: Driver, analysis_id: str, error: str, *, database: str | None = None) -> None:
    driver.execute_query("MATCH (a:Analysis {analysis_id: $id}) SET a.status = 'failed', a.error = $error, "
                         "a.finished_at = $now", id=analysis_id, error=error, now=time.time(), database_=database)


def run_analysis(driver: Driver, analysis_id: str, *, database: str | None = None) -> str:
    """Run a queued analysis and store its result; idempotent (a finished analysis is not rerun)."""
    a = get_analysis(driver, analysis_id, database=database)
    if a is None:
        raise LookupError(f"no analysis {analysis_id!r}")
    if a["status"] == "done":
        return "done"
    driver.execute_query("MATCH (a:Analysis {analysis_id: $id}) SET a.status = 'running', a.started_at = $now",
                         id=analysis_id, now=time.time(), database_=database)
    try:
        result = ANALYSES[a["kind"]](driver, a["params"], database)
    except (KeyError, ValueError, LookupError) as exc:
        # Bad parameters are the user's to fix: record the cause instead of retrying forever.
        fail_analysis(driver, analysis_id, f"{type(exc).__name__}: {exc}", database=database)
        return "failed"
    driver.execute_query("MATCH (a:Analysis {analysis_id: $id}) SET a.status = 'done', a.result = $result, "
                         "a.finished_at = $now", id=analysis_id, result=json.dumps(result), now=time.time(),
                         database_=database)
    return "done"
