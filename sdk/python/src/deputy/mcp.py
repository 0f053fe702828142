"""An MCP client transport through the mesh: an MCP client (the official `mcp` package) talks
to an MCP server that is a service of the mesh, unchanged; deputyd carries each of the
session's HTTP requests in the task, decides each tool call with the policy (`tools/call` and
the tool's name are in its input), and records it.

    async with deputy.mcp.connect(agent, "mcp://crm/mcp", task=task) as session:
        result = await session.call_tool("search_tickets", {"customer": "c-1001"})

A request deputyd refuses (a tool the policy does not allow, a revoked task, an exhausted
budget) never reaches the server. The transport answers it as the JSON-RPC error of that
request (code -32001, the problem in `data`), so `call_tool` raises the `mcp` package's
`McpError` and the session goes on; [`refusal`] turns that error back into the SDK's
[`Problem`](deputy.problems.Problem), and only an error this process made that way (a server
answering the same code and data is not taken for deputyd).

`deputy.current()` inside a stateful MCP server (one session, many requests) holds the facts
of the request that opened the session: run servers behind deputyd with `stateless_http=True`,
or read each request's own headers.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from .client import CURRENT, AsyncAgent, TaskArg, call_headers, target
from .problems import BY_KIND, PROBLEM_PREFIX, PROBLEM_SOURCE, Problem, problem_of

try:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import McpError
except ImportError as e:  # pragma: no cover - said to the user
    raise ImportError("deputy.mcp needs the MCP SDK: pip install 'deputy-sdk[mcp]'") from e

#: The JSON-RPC error code of a request deputyd refused (in JSON-RPC's server-defined range).
REFUSED = -32001
# Marks the errors this process made from deputyd's refusals: an MCP server can answer any
# JSON-RPC error it likes, code and data included, but cannot know this.
_MADE_HERE = secrets.token_hex(16)


class _RefusalsAsJsonRpcErrors(httpx.AsyncBaseTransport):
    """Answers a JSON-RPC request deputyd refused with that request's JSON-RPC error, so that
    the MCP session sees one failed request rather than a broken connection."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = await request.aread()
        response = await self.inner.handle_async_request(request)
        # Anything but deputyd's refusal streams through untouched (the server's event stream
        # included); a refusal is a small problem document, read whole.
        if response.status_code < 400 or response.headers.get(PROBLEM_SOURCE) is None:
            return response
        await response.aread()
        headers = {k: v for k, v in response.headers.items() if k not in ("content-encoding", "content-length")}
        read = httpx.Response(response.status_code, headers=headers, content=response.content, request=request)
        problem = problem_of(read)
        try:
            message = json.loads(sent)
        except ValueError:
            message = None
        if problem is None or not isinstance(message, dict) or "id" not in message:
            return read
        data = {"problem": problem.body, "source": problem.source, "made_here": _MADE_HERE}
        error = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": REFUSED, "message": str(problem), "data": data}}
        return httpx.Response(200, json=error, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def refusal(error: BaseException) -> Problem | None:
    """The problem deputyd refused an MCP request with, from the `McpError` `call_tool` (or any
    session request) raised; `None` for any other error."""
    if not isinstance(error, McpError) or error.error.code != REFUSED:
        return None
    data: Any = error.error.data
    if not isinstance(data, dict) or data.get("made_here") != _MADE_HERE:
        return None
    body = data.get("problem", {})
    kind = str(body.get("type", "")).removeprefix(PROBLEM_PREFIX)
    return BY_KIND.get(kind, Problem)(body, str(data.get("source", "")))


def http_client(agent: AsyncAgent, task: TaskArg = CURRENT) -> httpx.AsyncClient:
    """The HTTP client an MCP session through `agent`'s deputyd uses, in `task` (fixed now)."""
    inner = httpx.AsyncHTTPTransport(proxy=agent.proxy_url, trust_env=False)
    return httpx.AsyncClient(
        transport=_RefusalsAsJsonRpcErrors(inner),
        headers=call_headers(task),
        # No read timeout: MCP keeps a stream open for the server's messages.
        timeout=httpx.Timeout(agent.timeout, read=None),
        trust_env=False,
        follow_redirects=False,
    )


@asynccontextmanager
async def transport(agent: AsyncAgent, url_or_service: str, path: str = "/mcp", *, task: TaskArg = CURRENT):
    """The streamable-HTTP transport to the MCP server `url_or_service` (`mcp://crm/mcp`, or a
    service name and `path`) through `agent`'s deputyd, in `task`: yields the read and write
    streams and the session id getter, as `mcp`'s own transports do."""
    url = target(url_or_service) if "://" in url_or_service else target(url_or_service, path)
    async with http_client(agent, task) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


@asynccontextmanager
async def connect(
    agent: AsyncAgent, url_or_service: str, path: str = "/mcp", *, task: TaskArg = CURRENT
) -> AsyncIterator[ClientSession]:
    """An initialized MCP `ClientSession` with the server, through the mesh."""
    async with transport(agent, url_or_service, path, task=task) as (read, write, _session_id):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session
