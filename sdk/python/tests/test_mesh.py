"""The SDK against a real mesh: each refusal is a real one, raised as its own exception."""

import asyncio
import json
import uuid

import deputy
import deputy.mcp
import httpx
import pytest
from deputy import problems
from mcp.shared.exceptions import McpError

FRONTDOOR = "spiffe://example.org/agent/frontdoor"
TRIAGE = "spiffe://example.org/agent/triage"


def alice(**kwargs) -> deputy.Task:
    return deputy.Task("user:alice@example.org", scope=["tickets:read"], **kwargs)


def test_a_call_in_a_task_arrives_with_the_facts_deputyd_verified(mesh):
    task = alice()
    with deputy.Agent(mesh["frontdoor"], client_id="frontdoor") as agent:
        answer = agent.call("triage", "/whoami", task=task).json()
        # The same, written as an mcp:// URL.
        again = agent.request("GET", "mcp://triage/whoami", task=task).json()
    assert answer["peer"] == FRONTDOOR
    assert answer["principal"] == "user:alice@example.org"
    assert answer["task"] == task.id
    assert answer["scope"] == ["tickets:read"]
    assert answer["actors"] == [FRONTDOOR, TRIAGE]
    assert answer["has_context"]
    assert again["task"] == task.id


def test_a_task_is_continued_across_two_agents_in_async_code_and_over_mcp(mesh):
    async def go():
        task = alice()
        async with deputy.AsyncAgent(mesh["frontdoor"]) as agent:
            return task, (await agent.call("triage", "/lookup?customer=c-1001", task=task)).json()

    task, answer = asyncio.run(go())
    assert answer["error"] is False, answer
    verified = answer["content"]["verified"]
    # The CRM saw triage, acting in alice's task that frontdoor started.
    assert verified == {
        "peer": TRIAGE,
        "principal": "user:alice@example.org",
        "task": task.id,
        "actors": [FRONTDOOR, TRIAGE, "spiffe://example.org/agent/crm"],
    }
    assert answer["content"]["tickets"] == ["T-9"]


def test_the_mcp_transport_calls_an_allowed_tool_and_a_refused_one_never_reaches_the_server(mesh):
    async def go():
        task = deputy.Task("user:bob@example.org", scope=["tickets:read"])
        async with deputy.AsyncAgent(mesh["triage"]) as agent:
            async with deputy.mcp.connect(agent, "mcp://crm/mcp", task=task) as session:
                tools = sorted(t.name for t in (await session.list_tools()).tools)
                summary = await session.call_tool("summarize", {"text": "Printer on fire. Send help."})
                with pytest.raises(McpError) as refused:
                    await session.call_tool("drop_database", {})
                # The session goes on after the refusal.
                again = await session.call_tool("summarize", {"text": "Still here. Yes."})
            seen = (await agent.call("crm", "/calls", task=deputy.NO_TASK)).json()
        return tools, summary, refused.value, again, seen

    tools, summary, refused, again, seen = asyncio.run(go())
    # The server lists three tools; triage sees the two the policy lets it call.
    assert tools == ["search_tickets", "summarize"]
    assert summary.isError is False and summary.content[0].text == "Printer on fire"
    problem = deputy.mcp.refusal(refused)
    assert isinstance(problem, deputy.PolicyDenied), refused
    assert problem.source == "this-node"
    assert any("may not call the MCP tool drop_database" in r for r in problem.reasons), problem.reasons
    assert again.content[0].text == "Still here"
    assert seen.count("summarize") == 2 and "drop_database" not in seen, seen


def test_each_refusal_is_its_own_exception_with_the_problems_fields(mesh, deputy_cli):
    with deputy.Agent(mesh["frontdoor"]) as agent:
        with pytest.raises(problems.UnknownService) as e:
            agent.call("nosuch", "/")
        assert e.value.source == "this-node" and e.value.status == 404 and "nosuch" in e.value.detail

        # frontdoor is not among the CRM's callers.
        with pytest.raises(deputy.PolicyDenied) as e:
            agent.call("crm", "/calls", task=alice())
        assert e.value.status == 403 and e.value.decision_id
        assert any("may not call crm" in r for r in e.value.reasons), e.value.reasons

        with pytest.raises(problems.ContextRefused):
            agent.call("triage", "/whoami", task=deputy.Continue("dctx_" + "A" * 43))

        # A retry is answered with the first response; the same key with another body is refused.
        key, task = str(uuid.uuid4()), alice()
        first = agent.call("triage", "/whoami", method="POST", json={"n": 1}, task=task, idempotency_key=key)
        again = agent.call("triage", "/whoami", method="POST", json={"n": 1}, task=task, idempotency_key=key)
        assert again.headers["deputy-idempotent-replay"] == "true" and again.json() == first.json()
        with pytest.raises(problems.IdempotencyKeyReused):
            agent.call("triage", "/whoami", method="POST", json={"n": 2}, task=task, idempotency_key=key)

        # The service's own error status, and a service pretending to be deputyd: neither is
        # one of deputyd's problems.
        with pytest.raises(deputy.ServiceError) as e:
            agent.call("triage", "/missing", task=alice())
        assert e.value.status == 404
        with pytest.raises(deputy.ServiceError) as e:
            agent.call("triage", "/forged", task=alice())
        assert not isinstance(e.value, deputy.Problem)


def test_an_approval_is_asked_for_granted_and_ridden_once(mesh, deputy_cli):
    task = alice()
    with deputy.Agent(mesh["frontdoor"]) as agent:
        with pytest.raises(deputy.ApprovalRequired) as e:
            agent.call("triage", "/tickets/9", method="DELETE", task=task)
        approval = e.value.approval_id
        assert approval and e.value.source == "this-node"
        deputy_cli("approvals", "approve", approval, "--note", "ok", "--socket", mesh["node1_operator"])
        done = agent.call("triage", "/tickets/9", method="DELETE", task=task, approval=approval).json()
        assert done["method"] == "DELETE" and done["task"] == task.id
        with pytest.raises(problems.ApprovalRefused):
            agent.call("triage", "/tickets/9", method="DELETE", task=task, approval=approval)


def test_a_dry_run_delivers_nothing(mesh):
    with deputy.Agent(mesh["frontdoor"]) as agent:
        before = agent.call("triage", "/delivered", task=alice()).json()
        report = agent.call("triage", "/whoami", method="POST", task=alice(), dry_run=True).json()
        after = agent.call("triage", "/delivered", task=alice()).json()
    assert report["dry_run"] is True, report
    assert after == before, "the dry run was delivered"


def test_refusals_further_down_the_task(mesh):
    with deputy.Agent(mesh["frontdoor"]) as agent:
        # triage may make one call below this link: the second is refused by its deputyd.
        spent = agent.call("triage", "/spend?n=2", task=alice(budget=1)).json()
        assert spent == ["ok", "BudgetExhausted"], spent
        # Continuing with more than was granted.
        escalated = agent.call("triage", "/escalate", task=alice()).json()
        assert escalated["raised"] == "ScopeEscalation" and escalated["source"] == "this-node", escalated


def test_a_task_revoked_at_the_service_node_is_refused_there(mesh, deputy_cli):
    task = alice()
    with deputy.Agent(mesh["frontdoor"]) as agent:
        agent.call("triage", "/whoami", task=task)
        out = deputy_cli(
            "revoke", "--task", task.id, "--reason", "leaked", "--for", "10m", "--socket", mesh["node2_operator"]
        )
        assert "applied" in json.loads(out), out
        with pytest.raises(problems.Revoked) as e:
            agent.call("triage", "/whoami", task=task)
    # node2 refused it, and node1 handed that on as the service's deputyd's.
    assert e.value.source == "service-node", e.value
    assert "leaked" in e.value.detail


def test_a_call_outside_the_mesh_is_refused_by_the_middleware(mesh):
    # A request straight to an agent's deputyd listener with no task is still a mesh call; a
    # request that never went through deputyd has no verified peer. The middleware's refusal
    # is checked in test_units.py; here, the real path: the facts exist only via deputyd.
    with deputy.Agent(mesh["frontdoor"]) as agent:
        answer = agent.call("triage", "/whoami", task=deputy.NO_TASK).json()
    assert answer["peer"] == FRONTDOOR and answer["task"] is None and not answer["has_context"]


def test_the_sdk_refuses_urls_deputyd_would_not_route():
    with pytest.raises(ValueError, match="https"):
        deputy.target("https://triage/x")
    assert deputy.target("mcp://crm/mcp?x=1") == "http://crm/mcp?x=1"
    assert deputy.target("crm", "tools") == "http://crm/tools"
    assert isinstance(httpx.URL(deputy.target("crm")), httpx.URL)
    for bad in ("crm/admin?x=", "a@crm", "mcp://a@crm/x", "mcp://crm:8080/x", "CRM"):
        with pytest.raises(ValueError):
            deputy.target(bad)
