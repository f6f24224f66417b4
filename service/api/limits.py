"""Request body caps: a pure ASGI middleware counts the bytes as they arrive (chunked bodies, without a
Content-Length, included) and answers 413 as soon as a body passes the cap, without reading the rest. Every
route is capped at ``ATLAS_API_MAX_BODY_BYTES`` except ``POST /corpora``, whose uploads are larger and which
caps them itself while streaming (``ATLAS_PIPELINE_MAX_UPLOAD_BYTES``, service/api/corpora.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]


def too_large(n_bytes: int, limit: int, setting: str) -> HTTPException:
    return HTTPException(413, f"the request body is over {limit:,} bytes (at least {n_bytes:,} sent); the limit is "
                              f"{setting}")


class BodyLimit:
    """``limit_of(scope) -> (bytes, setting name)``: the cap of this request, or None for a route that caps
    its own body."""

    def __init__(self, app: Callable[..., Awaitable[None]],
                 limit_of: Callable[[Scope], tuple[int, str] | None]) -> None:
        self.app, self.limit_of = app, limit_of

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        cap = self.limit_of(scope) if scope["type"] == "http" else None
        if cap is None:
            await self.app(scope, receive, send)
            return
        limit, setting = cap
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _reply_413(send, too_large(int(declared), limit, setting).detail)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # raised inside the app: FastAPI answers it as an HTTPException
                    raise too_large(received, limit, setting)
            return message

        await self.app(scope, capped_receive, send)


async def _reply_413(send: Callable[[Message], Awaitable[None]], detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
