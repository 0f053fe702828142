"""The CRM: an MCP server (the official `mcp` package) with a REST side, behind deputyd as the
`crm` agent. It reads PostgreSQL through its deputyd's PostgreSQL proxy (`CRM_DATABASE`,
HOST:PORT): no password here; deputyd logs in with a user Vault issued for the crm agent.

- MCP tool `search_tickets(customer)`: the customer's open tickets, from the database.
- `GET /customers/{id}`: a customer's record (the policy lets support read only its own
  team's customers, in business hours).
- `POST /payments/refunds`: a refund (the policy holds it for a human's approval).
"""

import contextlib
import os

import deputy
import pg8000.native
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

HOST, PORT = os.environ["CRM_DATABASE"].rsplit(":", 1)

server = FastMCP(
    "crm",
    stateless_http=True,
    json_response=True,
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)


def query(sql: str, **params):
    # The user is deputyd's business: it replaces whatever the client names.
    connection = pg8000.native.Connection("crm", host=HOST, port=int(PORT), database="crm")
    try:
        rows = connection.run(sql, **params)
        user = connection.run("SELECT current_user")[0][0]
        return rows, user
    finally:
        connection.close()


@server.tool()
def search_tickets(customer: str) -> dict:
    """The customer's open tickets."""
    rows, user = query("SELECT id, subject FROM tickets WHERE customer = :c ORDER BY id", c=customer)
    return {"customer": customer, "tickets": [{"id": r[0], "subject": r[1]} for r in rows], "database_user": user}


async def customer(request: Request):
    rows, user = query(
        "SELECT id, name, team FROM customers WHERE id = :id", id=request.path_params["id"]
    )
    if not rows:
        return JSONResponse({"error": "no such customer"}, status_code=404)
    cid, name, team = rows[0]
    return JSONResponse({"id": cid, "name": name, "team": team, "database_user": user})


async def refund(request: Request):
    body = await request.json()
    verified: deputy.Verified = request.state.deputy
    return JSONResponse({"refunded": body, "for": verified.principal, "task": verified.task})


@contextlib.asynccontextmanager
async def lifespan(_app):
    async with server.session_manager.run():
        yield


app = deputy.DeputyASGIMiddleware(
    Starlette(
        routes=[
            Route("/customers/{id}", customer),
            Route("/payments/refunds", refund, methods=["POST"]),
            Mount("/", app=server.streamable_http_app()),
        ],
        lifespan=lifespan,
    )
)
