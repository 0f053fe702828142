"""The CRM: an MCP server (the official `mcp` package) behind deputyd, as the `crm` agent. Each
tool answers with what deputyd verified about the call that reached it, so a test sees who
called for whom; `calls` lists every tool call that reached the server."""

import contextlib

import deputy
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

# deputyd is the only way in, and it names the upstream by its loopback address.
server = FastMCP(
    "crm",
    stateless_http=True,
    json_response=True,
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)
calls: list[str] = []


def facts() -> dict:
    verified = deputy.current()
    return {
        "peer": verified.peer,
        "principal": verified.principal,
        "task": verified.task,
        "actors": list(verified.actors),
    }


@server.tool()
def search_tickets(customer: str) -> dict:
    """The customer's open tickets."""
    calls.append("search_tickets")
    return {"customer": customer, "tickets": ["T-9"], "verified": facts()}


@server.tool()
def summarize(text: str) -> str:
    """A one-line summary."""
    calls.append("summarize")
    return text.split(".")[0]


@server.tool()
def drop_database() -> str:
    """Never allowed by the policy: the test checks it never gets here."""
    calls.append("drop_database")
    return "dropped"


async def seen(_request):
    return JSONResponse(calls)


@contextlib.asynccontextmanager
async def lifespan(_app):
    async with server.session_manager.run():
        yield


app = deputy.DeputyASGIMiddleware(
    Starlette(
        routes=[Route("/calls", seen), Mount("/", app=server.streamable_http_app())],
        lifespan=lifespan,
    )
)
