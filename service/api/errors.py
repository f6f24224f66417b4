"""Where errors become HTTP statuses: the one mapping from domain errors (``workers/errors.py``) to responses.

``install(app)`` registers the handlers; routes and library code raise, and never build an error body by hand.

| error | status | body |
| --- | --- | --- |
| ``InvalidInput`` | 422 | ``{"detail": [{"loc": [...], "msg": ..., "type": "value_error"}]}``, FastAPI's own shape |
| ``MalformedInput`` | 400 | same |
| ``NotPermitted`` | 403 | same |
| ``InputTooLarge`` | 413 | same |
| ``UnsupportedInputType`` | 415 | same |
| ``NotFound`` | 404 | ``{"detail": message}``, like ``HTTPException`` |

Request bodies and parameters FastAPI validates itself answer 422 through its own handler (a body that is not
UTF-8: its 400, declared on every operation with a body; a 405's ``Allow`` names all of the path's methods); the API-key
checks (``service/auth.py``) raise ``HTTPException`` (401, 403, 503); ``POST /cypher`` refusals keep their own
``{"rule", "message"}`` body (``service/api/cypher.py``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.errors import (
    InputTooLarge,
    InvalidInput,
    MalformedInput,
    NotFound,
    NotPermitted,
    UnsupportedInputType,
)

# Most specific first: the first class in an error's MRO found here gives its status.
STATUS: dict[type[Exception], int] = {
    MalformedInput: 400,
    NotPermitted: 403,
    InputTooLarge: 413,
    UnsupportedInputType: 415,
    InvalidInput: 422,
    NotFound: 404,
}


def status_of(exc: Exception) -> int:
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


def invalid_input_body(exc: InvalidInput) -> dict:
    return {"detail": [{"loc": list(exc.loc), "msg": str(exc), "type": "value_error"}]}


async def _invalid_input(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    return JSONResponse(invalid_input_body(exc), status_code=status_of(exc))


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer, except that a 405's ``Allow`` names every method the path has (Starlette names only
    those of the first route whose path matched, e.g. ``POST`` for ``/corpora``, which also has ``GET``)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        path = request.scope["path"]
        methods = {m for route in request.app.router.routes if getattr(route, "methods", None)
                   and getattr(route, "path_regex", None) is not None and route.path_regex.match(path)
                   for m in route.methods}
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)


# FastAPI answers 400 {"detail": "There was an error parsing the body"} for a body it cannot decode (bytes that
# are not UTF-8); invalid JSON is its 422. Every operation with a body declares that 400.
UNREADABLE_BODY = {"description": "The body could not be decoded (not UTF-8 text)",
                   "content": {"application/json": {"schema": {
                       "type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}}}}


def _declaring_unreadable_bodies(app: FastAPI):  # noqa: ANN202 - FastAPI's openapi callable
    generate = app.openapi

    def openapi() -> dict:
        spec = generate()  # FastAPI caches the document: this edits it once, in place
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict) and "requestBody" in operation:
                    operation.setdefault("responses", {}).setdefault("400", UNREADABLE_BODY)
        return spec

    return openapi


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (``create_app`` does), and declare the 400 of unreadable bodies."""
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.openapi = _declaring_unreadable_bodies(app)  # type: ignore[method-assign]
