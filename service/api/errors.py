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

Request bodies and parameters FastAPI validates itself answer 422 through its own handler; the API-key
checks (``service/auth.py``) raise ``HTTPException`` (401, 403, 503); ``POST /cypher`` refusals keep their own
``{"rule", "message"}`` body (``service/api/cypher.py``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

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


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (``create_app`` does)."""
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(NotFound, _not_found)
