"""Registry of models and dictionary sets: registered by path, stored in Neo4j with a content hash.

The hash covers every file's relative path and bytes, so a worker can refuse to compute with files that
changed after registration (:func:`verify_unchanged`). Workers re-hash only when a cheap fingerprint
(path, size, mtime of every file) differs from the one taken when they last hashed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from neo4j import Driver

from workers.errors import InvalidInput, NotPermitted

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class RegistryError(InvalidInput):
    """A registration or lookup failed; ``field`` names the offending request field (``loc`` is
    ``("body", field)``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(("body", field), message)
        self.field = field


class PathNotAllowed(RegistryError, NotPermitted):
    """The path lies outside ``ATLAS_REGISTRY_ROOTS``."""


# Weights formats that unpickle (run code) when loaded. Registration refuses them: only safetensors and GGUF.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def resolved(path: str | Path) -> Path:
    """``path`` with ``~`` expanded and symlinks followed; RegistryError for a path no file system can hold (a NUL
    byte, which the OS calls refuse with ValueError)."""
    if "\x00" in str(path):
        raise RegistryError("path", "the path contains a NUL byte")
    return Path(path).expanduser().resolve()


def check_registrable(path: str | Path, roots: list[Path]) -> Path:
    """``path`` resolved (symlinks followed), if it lies under one of ``roots`` and holds no pickled weights;
    PathNotAllowed outside the roots (naming them), RegistryError for pickles."""
    p = resolved(path)
    if not any(p == root or p.is_relative_to(root) for root in roots):
        raise PathNotAllowed("path", f"{p} is outside the directories models and dictionaries may be registered "
                                     f"from: {', '.join(map(str, roots))} (ATLAS_REGISTRY_ROOTS)")
    pickled = [f for f in files_of(p) if f.suffix.lower() in PICKLE_SUFFIXES] if p.exists() else []
    if pickled:
        raise RegistryError("path", f"{p} holds pickled weights ({', '.join(f.name for f in pickled[:3])}), which "
                                    "are never loaded (unpickling runs code): convert them to safetensors")
    return p


class RegisteredFilesChanged(RuntimeError):
    """The files of a registered model or dictionary set no longer match their registered hash."""


def files_of(path: Path) -> list[Path]:
    """The files a registration covers: ``path`` itself, or every file under it but dotfiles, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def content_hash(path: Path) -> str:
    """sha256 over (relative path, size, bytes) of every file under ``path`` (or of the file itself)."""
    path = Path(path)
    h = hashlib.sha256()
    for f in files_of(path):
        rel = f.name if path.is_file() else str(f.relative_to(path))
        h.update(rel.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def fingerprint(path: Path) -> tuple:
    """Cheap change detector: (relative path, size, mtime_ns) of every file."""
    path = Path(path)
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files_of(path))


@dataclass(frozen=True)
class RegisteredModel:
    model_id: str
    path: str
    format: str  # "hf" or "gguf"
    content_hash: str
    n_ctx: int | None
    registered_at: float


@dataclass(frozen=True)
class RegisteredDictionarySet:
    dictionary_set_id: str
    path: str
    format: str
    content_hash: str
    model_id: str
    n_dictionaries: int
    registered_at: float


def _check_id(field: str, value: str) -> None:
    if not ID_PATTERN.fullmatch(value or ""):
        raise RegistryError(field, f"{field} {value!r} must be 1-64 letters, digits, '_', '.' or '-' "
                                   "and start with a letter or digit")


def _model_context(path: Path) -> int | None:
    cfg = json.loads((path / "config.json").read_text())
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


def inspect_model(path: Path) -> tuple[str, int | None]:
    """(format, context length) of a model path; RegistryError naming ``path`` if it is not a model."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", None
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", _model_context(path)
    raise RegistryError("path", f"{path} is neither a Hugging Face model directory (with config.json) "
                                "nor a .gguf file")


def register_model(driver: Driver, model_id: str, path: str | Path, database: str | None = None, *,
                   roots: list[Path] | None = None) -> RegisteredModel:
    """Register (or re-register, updating the hash) a model under ``model_id``. ``roots``: where it may lie
    (:func:`check_registrable`; the API passes ATLAS_REGISTRY_ROOTS, trusted library callers may pass None)."""
    _check_id("model_id", model_id)
    p = resolved(path) if roots is None else check_registrable(path, roots)
    if not p.exists():
        raise RegistryError("path", f"{p} does not exist")
    fmt, n_ctx = inspect_model(p)
    reg = RegisteredModel(model_id, str(p), fmt, content_hash(p), n_ctx, time.time())
    driver.execute_query("MERGE (m:Model {model_id: $model_id}) SET m += $props",
                         model_id=model_id, props=asdict(reg), database_=database)
    return reg


def register_dictionary_set(driver: Driver, dictionary_set_id: str, path: str | Path, model_id: str,
                            database: str | None = None, *, roots: list[Path] | None = None) -> RegisteredDictionarySet:
    """Register a dictionary directory (any format ``load_dictionary_set`` reads) for a registered model;
    ``roots`` as for :func:`register_model`."""
    from workers.dictionaries.formats import detect_format, load_dictionary_set

    _check_id("dictionary_set_id", dictionary_set_id)
    p = resolved(path) if roots is None else check_registrable(path, roots)
    get_model(driver, model_id, database=database, field="model_id")
    if not p.is_dir():
        raise RegistryError("path", f"{p} is not a directory (expected a dictionary set directory)")
    try:
        fmt = detect_format(p)
        n = len(load_dictionary_set(p))
    except (ValueError, OSError, KeyError) as exc:
        raise RegistryError("path", f"{p} is not a readable dictionary set: {exc}") from exc
    reg = RegisteredDictionarySet(dictionary_set_id, str(p), fmt, content_hash(p), model_id, n, time.time())
    driver.execute_query(
        "MATCH (m:Model {model_id: $model_id}) "
        "MERGE (d:DictionarySet {dictionary_set_id: $id}) SET d += $props MERGE (d)-[:FOR_MODEL]->(m)",
        model_id=model_id, id=dictionary_set_id, props=asdict(reg), database_=database)
    return reg


def get_model(driver: Driver, model_id: str, database: str | None = None, field: str = "model") -> RegisteredModel:
    recs = driver.execute_query("MATCH (m:Model {model_id: $id}) RETURN m", id=model_id, database_=database).records
    if not recs:
        raise RegistryError(field, f"unknown model {model_id!r}: register it first (POST /registry/models)")
    m = dict(recs[0]["m"])
    return RegisteredModel(**{k: m.get(k) for k in RegisteredModel.__dataclass_fields__})


def get_dictionary_set(driver: Driver, dictionary_set_id: str, database: str | None = None,
                       field: str = "dictionary_set") -> RegisteredDictionarySet:
    recs = driver.execute_query("MATCH (d:DictionarySet {dictionary_set_id: $id}) RETURN d",
                                id=dictionary_set_id, database_=database).records
    if not recs:
        raise RegistryError(field, f"unknown dictionary set {dictionary_set_id!r}: register it first "
                                   "(POST /registry/dictionary-sets)")
    d = dict(recs[0]["d"])
    return RegisteredDictionarySet(**{k: d.get(k) for k in RegisteredDictionarySet.__dataclass_fields__})


def list_registry(driver: Driver, database: str | None = None) -> tuple[list[RegisteredModel], list[RegisteredDictionarySet]]:
    models = [get_model(driver, r["id"], database) for r in driver.execute_query(
        "MATCH (m:Model) WHERE m.content_hash IS NOT NULL RETURN m.model_id AS id ORDER BY id", database_=database).records]
    dsets = [get_dictionary_set(driver, r["id"], database) for r in driver.execute_query(
        "MATCH (d:DictionarySet) WHERE d.content_hash IS NOT NULL RETURN d.dictionary_set_id AS id ORDER BY id",
        database_=database).records]
    return models, dsets


def verify_unchanged(kind: str, item_id: str, path: str, registered_hash: str) -> None:
    """Raise :class:`RegisteredFilesChanged` when the files at ``path`` no longer hash to the registered value."""
    p = Path(path)
    if not p.exists():
        raise RegisteredFilesChanged(f"{kind} {item_id!r}: {p} no longer exists; re-register it")
    now = content_hash(p)
    if now != registered_hash:
        raise RegisteredFilesChanged(
            f"{kind} {item_id!r}: files at {p} changed since registration (hash {now[:12]} != registered "
            f"{registered_hash[:12]}); re-register it to use the new files")
