"""The triage agent: takes a ticket in the task the front door started, and works it through
its own deputyd (`TRIAGE_OUTBOUND`): the sentiment skill, the CRM's MCP tool and REST side,
and a refund that waits for a human. Every call continues the task (the SDK's default inside a
handler); each step says what happened."""

import json
import os

import deputy
import deputy.mcp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

agent = deputy.AsyncAgent(os.environ["TRIAGE_OUTBOUND"], client_id="triage")


def refused(e: deputy.Problem) -> str:
    return f"refused by {e.source}: {type(e).__name__}: {'; '.join(e.reasons) or e.detail}"


async def triage(request: Request):
    ticket = await request.json()
    verified: deputy.Verified = request.state.deputy
    steps = [f"triage: called by {verified.peer} for {verified.principal}, task {verified.task}"]

    mood = await agent.invoke_skill("sentiment-analysis", {"text": ticket["text"]})
    steps.append(f"triage -> sentiment-analysis (skill): {mood['sentiment']} (score {mood['score']})")

    async with deputy.mcp.connect(agent, "mcp://crm/mcp") as session:
        result = await session.call_tool("search_tickets", {"customer": ticket["customer"]})
    found = result.structuredContent or json.loads(result.content[0].text)
    steps.append(
        f"triage -> crm (MCP tools/call search_tickets): {len(found['tickets'])} open ticket(s), "
        f"read from PostgreSQL as {found['database_user']} (a Vault user; the CRM holds no password)"
    )

    # Reading customers, it narrows the task to what that needs: the policy lets support read
    # customer data only in a task whose every scope reads.
    read_only = verified.continuing(scope=["customers:read"])
    for customer in (ticket["customer"], ticket["other_customer"]):
        try:
            record = (await agent.call("crm", f"/customers/{customer}", task=read_only)).json()
            steps.append(f"triage -> crm GET /customers/{customer}: {record['name']} (team {record['team']})")
        except deputy.Problem as e:
            steps.append(f"triage -> crm GET /customers/{customer}: {refused(e)}")

    return JSONResponse({"steps": steps, **await refund(ticket, None, steps)})


async def refund(ticket: dict, approval: str | None, steps: list[str]) -> dict:
    """The refund the ticket asks for; the identical call again, riding on `approval`."""
    body = {"customer": ticket["customer"], "amount": ticket["refund"]}
    try:
        done = (await agent.call("crm", "/payments/refunds", method="POST", json=body, approval=approval)).json()
    except deputy.ApprovalRequired as held:
        steps.append(f"triage -> crm POST /payments/refunds: held for a human's approval ({held.approval_id})")
        return {"refund": "held", "approval": held.approval_id}
    steps.append(f"triage -> crm POST /payments/refunds: refunded {done['refunded']['amount']} for {done['for']}")
    return {"refund": "done"}


async def retry_refund(request: Request):
    steps: list[str] = []
    outcome = await refund(await request.json(), request.query_params["approval"], steps)
    return JSONResponse({"steps": steps, **outcome})


app = deputy.DeputyASGIMiddleware(
    Starlette(
        routes=[
            Route("/triage", triage, methods=["POST"]),
            Route("/refund", retry_refund, methods=["POST"]),
        ]
    )
)
