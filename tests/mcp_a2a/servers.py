"""The servers of tests/tests/mcp_a2a.rs, behind deputyd on the service node.

`crm_sse` and `crm_json`: one MCP server (the official `mcp` package) with three tools, answering
with server-sent events or with JSON. `writer`: an A2A agent (the official `a2a-sdk`) with two
skills. Each records what reached it at `/reached`, so the test sees what deputyd let through.
"""

import contextlib
import gzip
import json

import deputy
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.apps import A2AStarletteApplication
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentSkill
from a2a.utils import new_agent_text_message, new_task
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

reached: list = []


async def seen(_request):
    return JSONResponse(reached)


ALL_TOOLS = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("lookup_customer", "refund", "search_tickets")]}


async def rogue(request):
    """A server that answers any request with the whole tool list (as a client would take it, by
    id), in the way `?mode=` says: JSON, events, events in UTF-7, or compressed JSON."""
    call = await request.json()
    message = json.dumps({"jsonrpc": "2.0", "id": call.get("id", 0), "result": ALL_TOOLS})
    mode = request.query_params.get("mode", "json")
    if mode == "json":
        return Response(message, media_type="application/json")
    if mode == "sse":
        return Response(f": hello\nevent: message\ndata: {message}\n\n", media_type="text/event-stream")
    if mode == "sse-x":
        # Clients read a type that holds (httpx-sse) or starts with (mcp) the one they want.
        return Response(f"data: {message}\n\n", headers={"content-type": "text/event-stream-x"})
    if mode == "charset-star":
        # httpx reads RFC 2231 parameters: this one says UTF-7 to it.
        return Response(f"data: {message}\n\n", headers={"content-type": "text/event-stream; charset*=''utf-7"})
    if mode == "utf7":
        # To a UTF-7 reader the comment holds two line feeds, then an event with every tool.
        body = f":+AAoACg-data: {message}+AAoACg-\n\n".encode()
        return Response(body, headers={"content-type": "text/event-stream; charset=utf-7"})
    return Response(gzip.compress(message.encode()), media_type="application/json",
                    headers={"content-encoding": "gzip"})


def crm(json_response: bool):
    server = FastMCP(
        "crm",
        stateless_http=True,
        json_response=json_response,
        # deputyd is the only way in, and it names the upstream by its loopback address.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    @server.tool()
    def lookup_customer(customer_id: str, note: str = "") -> dict:
        """A customer's record."""
        reached.append({"tool": "lookup_customer", "customer_id": customer_id})
        return {"customer_id": customer_id, "principal": deputy.current().principal}

    @server.tool()
    def search_tickets(query: str) -> list:
        """Tickets matching a query."""
        reached.append({"tool": "search_tickets"})
        return ["T-9"]

    @server.tool()
    def refund(amount: float) -> str:
        """Never listed for support agents, never called by them."""
        reached.append({"tool": "refund"})
        return "refunded"

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async with server.session_manager.run():
            yield

    return deputy.DeputyASGIMiddleware(
        Starlette(
            routes=[
                Route("/reached", seen),
                Route("/rogue", rogue, methods=["POST"]),
                Mount("/", app=server.streamable_http_app()),
            ],
            lifespan=lifespan,
        )
    )


crm_sse = crm(json_response=False)
crm_json = crm(json_response=True)


class Writer(AgentExecutor):
    """Summarises the text it is sent, in two steps of a task (so a stream has events)."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        reached.append({"a2a": "message", "skill": (context.message.metadata or {}).get("skill")})
        task = context.current_task or new_task(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work(new_agent_text_message("reading", task.context_id, task.id))
        text = context.get_user_input()
        await updater.complete(new_agent_text_message("summary: " + text.split(".")[0], task.context_id, task.id))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        reached.append({"a2a": "cancel"})


card = AgentCard(
    name="writer",
    description="Summarises and translates.",
    # Its name in the mesh: callers reach it through their own deputyd.
    url="http://writer/",
    version="1.0.0",
    default_input_modes=["text/plain"],
    default_output_modes=["text/plain"],
    capabilities=AgentCapabilities(streaming=True),
    skills=[
        AgentSkill(id="summarize", name="Summarize", description="One line.", tags=["text"]),
        AgentSkill(id="translate", name="Translate", description="To French.", tags=["text"]),
    ],
)

def _writer():
    app = A2AStarletteApplication(
        agent_card=card,
        http_handler=DefaultRequestHandler(agent_executor=Writer(), task_store=InMemoryTaskStore()),
    ).build()
    app.router.routes.append(Route("/reached", seen))
    return deputy.DeputyASGIMiddleware(app)


writer = _writer()
