"""`Atlas`: one method per thing a researcher asks the API for; tables come back as pandas DataFrames."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pandas as pd

from atlas_client.jobs import Analysis, Job
from atlas_client.results import Circuit

DEFAULT_URL = "http://127.0.0.1:8000"
Prompt = str | Mapping[str, Any]


class AtlasError(RuntimeError):
    """The API refused or failed a request; ``status`` is its HTTP status (0: no answer) and the message is
    the API's own (``detail``, each ``loc: msg`` of a validation error, or a Cypher refusal's rule)."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path} answered {status}: {message}" if status else message)
        self.status = status
        self.method = method
        self.path = path
        self.message = message


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        if "rule" in body and "message" in body:  # POST /cypher refusals
            return f"{body['message']} (rule {body['rule']})"
        detail = body.get("detail", body)
        if isinstance(detail, list):
            return "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict)
                             else str(d) for d in detail)
        return str(detail)
    return str(body)[:500]


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts of a file: ``.jsonl`` (one JSON string or ``{"text", "targets"}`` object a line), ``.json`` (a
    list of those) or anything else as plain text (one prompt a non-empty line)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        prompts = json.loads(text)
        if not isinstance(prompts, list):
            raise ValueError(f"{path}: a .json corpus file holds a list of prompts")
        return prompts
    if path.suffix in (".jsonl", ".ndjson"):
        out = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        return out
    return [line.strip() for line in text.splitlines() if line.strip()]


class Atlas:
    """A connection to a Circuit Atlas API.

    ``url`` defaults to ``$ATLAS_API_URL`` (else http://127.0.0.1:8000) and ``key`` to ``$ATLAS_API_KEY``;
    reads need no key, submitting and labelling need a ``write`` key, :meth:`cypher` a ``cypher`` key
    (``atlas keys create NAME``).
    """

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.url = (url or os.environ.get("ATLAS_API_URL") or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get("ATLAS_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Atlas({self.url!r})"

    # -- HTTP ------------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json_body: Any = None, decode: bool = True) -> Any:
        """One API call; the decoded JSON answer (None without ``decode``), or AtlasError with the API's message."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=params, json=json_body)
        except httpx.TransportError as exc:
            raise AtlasError(0, method, path, f"the API at {self.url} did not answer ({exc}); is `atlas api` "
                                              "running?") from None
        if response.status_code >= 400:
            raise AtlasError(response.status_code, method, path, _message(response))
        return response.json() if decode else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    # -- corpora and jobs -------------------------------------------------------------------------------------

    def submit_corpus(self, prompts: Sequence[Prompt] | str | Path, model: str, dictionaries: str, *,
                      settings: Mapping[str, Any] | None = None, name: str = "") -> Job:
        """Queue a corpus (a list of prompts, or a file for :func:`read_prompts`) with a registered model and
        dictionary set; ``settings`` as POST /corpora's (prune, node_threshold, edge_threshold, max_features,
        batch_size). Returns the job; ``.wait()`` follows it with a progress bar."""
        if isinstance(prompts, str | Path):
            prompts = read_prompts(prompts)
        body = {"model": model, "dictionary_set": dictionaries, "name": name, "prompts": list(prompts),
                "settings": dict(settings or {})}
        accepted = self.request("POST", "/corpora", json_body=body)
        return Job(self, accepted["job_id"], accepted["corpus_id"], accepted)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (its status is read at once, so an unknown id fails here)."""
        status = self.get(f"/jobs/{quote(job_id, safe='')}")
        return Job(self, job_id, status["corpus_id"])

    def corpora(self, limit: int = 50) -> pd.DataFrame:
        """Corpora, newest first (one row each; ``job`` is the job's state and counters)."""
        return pd.DataFrame(self.get("/corpora", limit=limit)["items"])

    def graphs(self, corpus_id: str | None = None, *, model: str | None = None, text: str | None = None,
               limit: int = 1000) -> pd.DataFrame:
        """Complete graphs (of one corpus or model, or whose prompt contains ``text``), ordered by graph_id, with
        their prompt's text and targets."""
        items = self._pages("/graphs", {"corpus_id": corpus_id, "model": model, "text": text}, limit)
        return pd.DataFrame(items, columns=["graph_id", "corpus_id", "prompt_id", "model", "prompt_text", "targets",
                                            "n_nodes", "n_edges"])

    def _pages(self, path: str, params: dict[str, Any], limit: int) -> list[dict]:
        items: list[dict] = []
        offset: int | None = 0
        while offset is not None and len(items) < limit:
            page = self.get(path, **params, offset=offset, limit=min(1000, limit - len(items)))
            items += page["items"]
            offset = page["next_offset"]
        return items

    # -- circuits ---------------------------------------------------------------------------------------------

    def circuit(self, graph_id: str, *, node_threshold: float = 0.0, edge_threshold: float = 0.0,
                max_nodes: int = 500, max_edges: int = 5000, target: str | None = None) -> Circuit:
        """A stored graph's circuit pruned at read time (``target``: only a node's upstream cone)."""
        path, params = self._circuit_args(graph_id, node_threshold, edge_threshold, max_nodes, max_edges, target)
        return Circuit.from_api(self.get(path, **params, format="json"))

    def neuronpedia(self, graph_id: str, *, node_threshold: float = 0.0, edge_threshold: float = 0.0,
                    max_nodes: int = 500, max_edges: int = 5000, target: str | None = None) -> dict:
        """The same circuit as Neuronpedia graph JSON (schema_version 1)."""
        path, params = self._circuit_args(graph_id, node_threshold, edge_threshold, max_nodes, max_edges, target)
        return self.get(path, **params, format="neuronpedia")

    @staticmethod
    def _circuit_args(graph_id: str, node_threshold: float, edge_threshold: float, max_nodes: int, max_edges: int,
                      target: str | None) -> tuple[str, dict[str, Any]]:
        return (f"/graphs/{quote(graph_id, safe='')}/circuit",
                {"node_threshold": node_threshold, "edge_threshold": edge_threshold, "max_nodes": max_nodes,
                 "max_edges": max_edges, "target": target})

    # -- features and global circuits -----------------------------------------------------------------------

    def feature(self, fkey: str, corpus_id: str | None = None, *, top: int = 10, neighbours: int = 10,
                before: int = 8, after: int = 4) -> dict:
        """The feature page: top activations with context, upstream/downstream aggregates, circuit frequency."""
        return self.get(f"/features/{quote(fkey, safe='/')}", corpus_id=corpus_id, top=top, neighbours=neighbours,
                        before=before, after=after)

    def logit_effects(self, fkey: str, k: int = 10) -> pd.DataFrame:
        """The tokens the feature promotes (``side`` promoted) and suppresses most through the direct path."""
        out = self.get(f"/features/{quote(fkey, safe='/')}/logit-effects", k=k)
        rows = [{**e, "side": side} for side in ("promoted", "suppressed") for e in out[side]]
        return pd.DataFrame(rows, columns=["side", "token", "token_id", "effect"])

    def label_feature(self, fkey: str, label: str, note: str = "") -> dict:
        """Attach a label and a note to a feature (a ``write`` key; the key's id is stored as the author)."""
        return self.request("PUT", f"/features/{quote(fkey, safe='/')}/label", json_body={"label": label, "note": note})

    def unlabel_feature(self, fkey: str) -> None:
        """Remove a feature's label and note."""
        self.request("DELETE", f"/features/{quote(fkey, safe='/')}/label", decode=False)

    def search_features(self, q: str, corpus_id: str | None = None, limit: int = 20) -> pd.DataFrame:
        """Feature search by key, prefix or token (GET /features?q=), ranked."""
        return pd.DataFrame(self.get("/features", q=q, corpus_id=corpus_id, limit=limit)["items"])

    def global_circuit(self, fkey: str, corpus_id: str | None = None, *,
                       direction: Literal["upstream", "downstream"] = "upstream",
                       rank_by: Literal["norm_w", "sum_abs_w", "n"] = "norm_w", limit: int = 20) -> pd.DataFrame:
        """The corpus-aggregated features feeding (upstream) or fed by (downstream) ``fkey``."""
        page = self.get("/global/neighbours", fkey=fkey, corpus_id=corpus_id, direction=direction, rank_by=rank_by,
                        limit=limit)
        return pd.DataFrame(page["items"], columns=["fkey", "dictionary", "index", "sum_w", "sum_abs_w", "n",
                                                    "source_activation_mass", "norm_w"])

    # -- analyses and Cypher ----------------------------------------------------------------------------------

    def analysis(self, kind: str, params: Mapping[str, Any] | None = None, *, wait: bool = True,
                 timeout_s: float | None = 600) -> Analysis:
        """Queue a cross-prompt analysis (POST /analyses: recurring_features, consensus_circuit,
        circuit_difference, cluster_prompts, ...); with ``wait`` (default) poll until done (``.result``)."""
        out = self.request("POST", "/analyses", json_body={"kind": kind, "params": dict(params or {})})
        handle = Analysis(self, out["analysis_id"], out)
        return handle.wait(timeout_s=timeout_s) if wait else handle

    def cypher(self, query: str, params: Mapping[str, Any] | None = None, *, max_rows: int | None = None
               ) -> pd.DataFrame:
        """A read-only Cypher query (needs a ``cypher`` key); the rows as a DataFrame. ``df.attrs`` holds
        ``truncated_by`` (a row or byte cap cut the result) and ``elapsed_ms``."""
        out = self.request("POST", "/cypher", json_body={"query": query, "parameters": dict(params or {}),
                                                         "max_rows": max_rows})
        frame = pd.DataFrame(out["rows"], columns=out["columns"])
        frame.attrs.update(truncated_by=out["truncated_by"], elapsed_ms=out["elapsed_ms"])
        return frame
