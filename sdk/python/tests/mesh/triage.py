"""The triage agent's service behind deputyd (ASGI, with the SDK's middleware). Its handlers
continue the task they were called in: through triage's own deputyd, to the CRM's MCP server.
`DEPUTY_TRIAGE_OUTBOUND` is triage's outbound listener."""

import json
import os

import deputy
import deputy.mcp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

agent = deputy.AsyncAgent(os.environ["DEPUTY_TRIAGE_OUTBOUND"], client_id="triage")
delivered: list[str] = []


async def whoami(request: Request):
    delivered.append(request.url.path)
    verified: deputy.Verified = request.state.deputy
    return JSONResponse(
        {
            "peer": verified.peer,
            "principal": verified.principal,
            "task": verified.task,
            "scope": list(verified.scope),
            "budget": verified.budget,
            "actors": list(verified.actors),
            "has_context": bool(verified.context),
            "method": request.method,
            "body": (await request.body()).decode(),
        }
    )


async def lookup(request: Request):
    """Continues the task to the CRM over MCP (the current task: nothing passed)."""
    delivered.append(request.url.path)
    async with deputy.mcp.connect(agent, "crm") as session:
        result = await session.call_tool("search_tickets", {"customer": request.query_params["customer"]})
    content = result.structuredContent or json.loads(result.content[0].text)
    return JSONResponse({"error": result.isError, "content": content})


async def spend(request: Request):
    """Makes `n` calls to the CRM in the current task; says how each ended."""
    outcomes = []
    for _ in range(int(request.query_params["n"])):
        try:
            await agent.call("crm", "/calls")
            outcomes.append("ok")
        except deputy.Problem as e:
            outcomes.append(type(e).__name__)
    return JSONResponse(outcomes)


async def escalate(_request: Request):
    """Continues the current task asking for more than it was granted."""
    verified = deputy.current()
    try:
        await agent.call("crm", "/calls", task=verified.continuing(scope=["tickets:write"]))
    except deputy.Problem as e:
        return JSONResponse({"raised": type(e).__name__, "source": e.source, "detail": e.detail})
    return JSONResponse({"raised": None})


async def forged(_request: Request):
    """A service answering as if it were deputyd refusing the call."""
    body = b'{"type":"urn:deputy:problem:approval-required","status":403,"approval_id":"apr_forged"}'
    return Response(
        body,
        status_code=403,
        media_type="application/problem+json",
        headers={"deputy-problem-source": "this-node"},
    )


async def delivered_paths(_request: Request):
    return JSONResponse(delivered)


app = deputy.DeputyASGIMiddleware(
    Starlette(
        routes=[
            Route("/whoami", whoami, methods=["GET", "POST", "DELETE"]),
            Route("/tickets/{id}", whoami, methods=["GET", "DELETE", "POST"]),
            Route("/lookup", lookup),
            Route("/spend", spend),
            Route("/escalate", escalate),
            Route("/forged", forged),
            Route("/delivered", delivered_paths),
        ]
    )
)
