"""The import rules the README's module table states ("May import"), read from the source with ``ast``: the
layering is one way (``service/`` imports ``workers/``, never the reverse) and the bottom packages stay bottom."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path, *, type_hints: bool) -> set[str]:
    """Dotted names of the repository's own modules that ``path`` imports (also lazily, inside functions);
    with ``type_hints=False``, not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    hinted: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            hinted |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if not type_hints and id(node) in hinted:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] in ("workers", "service")}


def _imported_by(package: str, *, type_hints: bool = False) -> dict[str, set[str]]:
    root = REPO_ROOT / package
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    return {str(f.relative_to(REPO_ROOT)): _imports(f, type_hints=type_hints) for f in files}


def _outside(imported: dict[str, set[str]], allowed: tuple[str, ...]) -> dict[str, set[str]]:
    # ``from workers import neuronpedia`` names ``workers`` too: a parent package of an allowed module is allowed
    bad = {f: {m for m in mods if not any(m == a or m.startswith(a + ".") or a.startswith(m + ".") for a in allowed)}
           for f, mods in imported.items()}
    return {f: mods for f, mods in bad.items() if mods}


def test_the_helper_sees_lazy_imports_and_tells_type_hints_apart(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers.engine import Graph\n"
                      "def f():\n    from service.api import deps\n    import workers.store.writer\n")
    assert _imports(source, type_hints=False) == {"service.api", "service.api.deps", "workers.store.writer"}
    assert "workers.engine.Graph" in _imports(source, type_hints=True)


def test_workers_never_import_service():
    assert _outside(_imported_by("workers", type_hints=True), ("workers",)) == {}


def test_the_vocabulary_and_the_domain_errors_import_nothing_of_ours():
    assert _outside(_imported_by("workers/vocabulary", type_hints=True), ("workers.vocabulary",)) == {}
    assert _imported_by("workers/errors.py", type_hints=True) == {"workers/errors.py": set()}


def test_the_engine_imports_only_dictionaries_models_vocabulary_and_the_exporter():
    allowed = ("workers.engine", "workers.dictionaries", "workers.models", "workers.vocabulary", "workers.neuronpedia")
    assert _outside(_imported_by("workers/engine", type_hints=True), allowed) == {}


def test_the_store_imports_the_engine_for_type_hints_only():
    assert _outside(_imported_by("workers/store"), ("workers.store", "workers.vocabulary")) == {}


def test_the_read_queries_load_no_model():
    allowed = ("workers.vocabulary", "workers.errors", "workers.neuronpedia", "workers.pipeline.jobs")
    assert _outside(_imported_by("service/query", type_hints=True), ("service.query", *allowed)) == {}
