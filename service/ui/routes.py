"""Serve ``service/ui/static`` at ``/ui``: ``/ui`` is the single-page app, ``/ui/<file>`` its assets,
``/ui/schema.json`` the vocabulary it draws with (``service/ui/schema.py``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from service.ui.schema import ui_schema

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Explicit types: some systems map .js to text/plain, and browsers refuse ES modules served that way.
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)


def _file(relative: str) -> FileResponse:
    path = (STATIC_DIR / relative).resolve()
    # resolve() folds '..': anything outside the static directory is not ours to serve.
    if not path.is_relative_to(STATIC_DIR) or not path.is_file():
        raise HTTPException(404, f"no UI asset {relative!r}")
    media = _MEDIA_TYPES.get(path.suffix)
    if media is None:
        raise HTTPException(404, f"no UI asset {relative!r} (type {path.suffix!r} is not served)")
    # The assets change with the code, not per request: revalidate each load so an upgrade shows at once.
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("", include_in_schema=False)
def ui_root() -> RedirectResponse:
    # Relative module imports in index.html resolve against /ui/, so the page must be served there.
    return RedirectResponse("/ui/", status_code=307)


@router.get("/", include_in_schema=False)
def ui_index() -> FileResponse:
    return _file("index.html")


@router.get("/schema.json", include_in_schema=False)
def ui_schema_json() -> JSONResponse:
    """The vocabulary the viewer draws with (service/ui/schema.py); before the asset route, which would 404 it."""
    return JSONResponse(ui_schema(), headers={"Cache-Control": "no-cache"})


@router.get("/{asset:path}", include_in_schema=False)
def ui_asset(asset: str) -> FileResponse:
    return _file(asset)
