"""What stands between the network and the labelling app's routes: request size limits, response headers,
the Host check, and JSON that any input can be echoed in.

* :class:`BodyLimit` (ASGI middleware): a request body over ``max_bytes`` is a 413 before it is read, by
  its ``Content-Length`` or, for a chunked body, as soon as the bytes received pass the limit. One route
  may take more (``POST /api/projects``: a project's items), and only from an admin's session, looked up
  before a byte of the body is read: a stranger cannot make the server buffer a large upload.
* :class:`SecurityHeaders` (ASGI middleware): every response gets a Content-Security-Policy that allows
  only this origin's scripts, styles and requests and no framing (clickjacking), ``nosniff``, a
  same-origin Referrer-Policy and Cross-Origin-Opener-Policy; API responses get ``Cache-Control:
  no-store`` (they depend on who asks); HSTS when the app is served over HTTPS.
* The Host check is Starlette's ``TrustedHostMiddleware`` (added in ``create_app``): a page from another
  site whose DNS name was rebound to this server's address sends its own name as Host and gets a 400.
* :class:`AsciiJSONResponse`: JSON with non-ASCII characters escaped, so an error that echoes the input
  (FastAPI's 422 does) never fails to encode a lone surrogate; browsers read the escapes as the same text.

Starlette and FastAPI have no body-size limit of their own; uvicorn bounds only headers. Left out:
per-route limits beyond the one large route, and compression.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",  # frame-ancestors for browsers that predate CSP level 2
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
HSTS = "max-age=31536000"


class AsciiJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class TooLarge(HTTPException):
    """Raised from ``receive`` when a chunked body passes the limit: an HTTPException, so that FastAPI's
    body parsing passes it on (any other error there becomes a 400) and the app answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")


class BodyLimit:
    """413 for request bodies over ``max_bytes``; ``large_route`` (method, path) may take up to
    ``large_bytes`` when ``allow_large(scope)`` says the caller may send that much (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        large_route: tuple[str, str],
        large_bytes: int,
        allow_large: Callable[[Scope], Awaitable[bool]],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.large_route = large_route
        self.large_bytes = large_bytes
        self.allow_large = allow_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        if (scope["method"], scope["path"]) == self.large_route and await self.allow_large(scope):
            limit = self.large_bytes
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not length.isdigit():
                await _answer(send, 400, "the Content-Length header is not a number")
                return
            if int(length) > limit:
                await _answer(send, 413, f"request body over the limit of {limit} bytes")
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise TooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except TooLarge:
            if not started:
                await _answer(send, 413, f"request body over the limit of {limit} bytes")


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The client may still be sending: tell it the connection will not be reused for more of this body.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """The headers of the module docstring on every response (set by the route where it chose its own)."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.headers = dict(HEADERS, **({"strict-transport-security": HSTS} if https else {}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = dict(self.headers)
                if api:
                    extra["cache-control"] = "no-store"
                message["headers"] = list(message.get("headers", [])) + [
                    (name.encode(), value.encode())
                    for name, value in extra.items()
                    if name.encode() not in present
                ]
            await send(message)

        await self.app(scope, receive, with_headers)
