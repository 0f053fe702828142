"""Middleware that hands a request handler what deputyd verified about its request.

Behind deputyd, an agent's service receives each call with the facts deputyd verified
(`Deputy-Peer-Id`, the task, the principal, the scopes, the chain and the handle to continue
the task). The middleware reads them into a [`Verified`](deputy.task.Verified), puts it where
the framework keeps request state (`scope["state"]["deputy"]` for ASGI,
`environ["deputy.verified"]` for WSGI) and makes it [`current`](deputy.task.current) while the
handler runs, so that calls the handler makes through its own deputyd continue the task.

A request without `Deputy-Peer-Id` did not come through deputyd: it is refused (403) unless
`require=False`. The facts are only as trustworthy as the path to this service: listen on
loopback or a unix socket that only deputyd reaches (deputyd removes any `Deputy-*` header a
peer sends; a process on the same host could still send them straight to this port).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .task import Verified, _enter, _leave

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REFUSAL = json.dumps(
    {
        "type": "about:blank",
        "title": "Not through deputyd",
        "status": 403,
        "detail": "this service takes calls only through deputyd (no Deputy-Peer-Id); call it "
        "through the mesh",
    }
).encode()


class DeputyASGIMiddleware:
    """ASGI middleware (Starlette, FastAPI, an MCP server's app)."""

    def __init__(self, app: ASGIApp, *, require: bool = True) -> None:
        self.app = app
        self.require = require

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        verified = Verified.from_headers(headers)
        if verified is None and self.require:
            if scope["type"] == "http":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"application/problem+json")],
                    }
                )
                await send({"type": "http.response.body", "body": _REFUSAL})
            return
        scope.setdefault("state", {})["deputy"] = verified
        token = _enter(verified)
        try:
            await self.app(scope, receive, send)
        finally:
            _leave(token)


class DeputyWSGIMiddleware:
    """WSGI middleware (Flask, Django)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *, require: bool = True) -> None:
        self.app = app
        self.require = require

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and isinstance(value, str)
        }
        verified = Verified.from_headers(headers)
        if verified is None and self.require:
            start_response("403 Forbidden", [("Content-Type", "application/problem+json")])
            return [_REFUSAL]
        environ["deputy.verified"] = verified
        token = _enter(verified)
        try:
            # The body is produced here, under the request's facts (a generator would run
            # after the context is left otherwise), and closed as PEP 3333 asks.
            body = self.app(environ, start_response)
            try:
                return list(body)
            finally:
                if hasattr(body, "close"):
                    body.close()
        finally:
            _leave(token)
