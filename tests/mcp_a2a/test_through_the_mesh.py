"""MCP and A2A through the mesh, as the support agent `support-eu` on the caller node: the
official `mcp` client against `crm-sse` and `crm-json`, the official `a2a-sdk` client against
`writer`. Run by tests/tests/mcp_a2a.rs, which starts the mesh and reads the logs afterwards.

The two nodes' policies differ on one customer on purpose: the caller's node believes cust-2002 is
the EU team's (the service's node knows it is the US team's), and the service's node believes
cust-3003 is (the caller's node knows better). So each refusal shows which end enforced the rule.
"""

import asyncio
import json
import os
import uuid

import deputy
import deputy.mcp
import httpx
import pytest
from a2a.client import A2ACardResolver, A2AClient
from a2a.client.errors import A2AClientHTTPError
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    MessageSendParams,
    Part,
    Role,
    SendMessageRequest,
    SendStreamingMessageRequest,
    TaskIdParams,
    TaskQueryParams,
    TextPart,
)
from deputy import problems
from deputy.client import call_headers
from mcp.shared.exceptions import McpError

SUPPORT = os.environ["DEPUTY_SUPPORT"]
WRITER = "spiffe://example.org/agent/writer"
CRMS = ["crm-sse", "crm-json"]


def alice() -> deputy.Task:
    return deputy.Task("user:alice@example.org", scope=["customers:read"])


async def reached(agent: deputy.AsyncAgent, service: str) -> list:
    return (await agent.call(service, "/reached", task=deputy.NO_TASK)).json()


@pytest.mark.parametrize("service", CRMS)
def test_the_tool_list_shows_exactly_the_tools_the_policy_allows(service):
    async def go():
        async with deputy.AsyncAgent(SUPPORT) as agent:
            async with deputy.mcp.connect(agent, f"mcp://{service}/mcp", task=alice()) as session:
                return sorted(t.name for t in (await session.list_tools()).tools)

    # The server has three tools; refund is not support-eu's to call, so it is not listed.
    assert asyncio.run(go()) == ["lookup_customer", "search_tickets"]


@pytest.mark.parametrize("service", CRMS)
def test_an_argument_rule_allows_one_customer_and_refuses_others_at_both_ends(service):
    async def go():
        async with deputy.AsyncAgent(SUPPORT) as agent:
            async with deputy.mcp.connect(agent, f"mcp://{service}/mcp", task=alice()) as session:
                allowed = await session.call_tool("lookup_customer", {"customer_id": "cust-1001"})
                refusals = {}
                for customer in ["cust-2002", "cust-3003"]:
                    with pytest.raises(McpError) as refused:
                        await session.call_tool("lookup_customer", {"customer_id": customer, "note": "zebra-note"})
                    refusals[customer] = deputy.mcp.refusal(refused.value)
            return allowed, refusals, await reached(agent, service)

    allowed, refusals, seen = asyncio.run(go())
    assert allowed.isError is False, allowed
    assert json.loads(allowed.content[0].text) == {"customer_id": "cust-1001", "principal": "user:alice@example.org"}
    # cust-2002 passed the caller's node (its data says EU) and was refused where the tool runs.
    far = refusals["cust-2002"]
    assert isinstance(far, deputy.PolicyDenied), far
    assert far.source == "service-node"
    assert any("the customer in /customer_id belongs to team us" in r for r in far.reasons), far.reasons
    # cust-3003 never left the caller's node.
    near = refusals["cust-3003"]
    assert isinstance(near, deputy.PolicyDenied) and near.source == "this-node", near
    assert any("the customer in /customer_id belongs to team us" in r for r in near.reasons), near.reasons
    assert [r.get("customer_id") for r in seen if r["tool"] == "lookup_customer"] == ["cust-1001"], seen


def test_an_argument_over_the_bound_or_given_twice_is_refused_before_the_server():
    long_id = "c-" + "7" * 300
    duplicate = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "lookup_customer", "arguments": {"customer_id": "cust-1001"}}})
    duplicate = duplicate.replace('"customer_id": "cust-1001"', '"customer_id": "cust-1001", "customer_id": "cust-2002"')

    async def go():
        async with deputy.AsyncAgent(SUPPORT) as agent:
            async with deputy.mcp.connect(agent, "mcp://crm-json/mcp", task=alice()) as session:
                with pytest.raises(McpError) as over:
                    await session.call_tool("lookup_customer", {"customer_id": long_id})
            with pytest.raises(problems.BodyRefused) as twice:
                await agent.request(
                    "POST", "mcp://crm-json/mcp", task=alice(), content=duplicate,
                    headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
                )
            return deputy.mcp.refusal(over.value), twice.value, await reached(agent, "crm-json")

    over, twice, seen = asyncio.run(go())
    assert isinstance(over, problems.BodyRefused) and over.source == "this-node", over
    assert "longer than 256 bytes" in over.detail and long_id not in over.detail, over.detail
    assert twice.source == "this-node" and "twice" in twice.detail, twice.detail
    assert "cust-2002" not in twice.detail
    assert not any(r.get("customer_id") in (long_id, "cust-2002") for r in seen), seen


def rogue_call(mode: str):
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "search_tickets", "arguments": {"query": "x"}}}

    async def go():
        async with deputy.AsyncAgent(SUPPORT) as agent:
            return await agent.request(
                "POST", f"mcp://crm-json/rogue?mode={mode}", task=alice(), json=call,
                headers={"accept": "application/json, text/event-stream"},
            )

    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["json", "sse", "sse-x", "charset-star"])
def test_a_list_is_filtered_whatever_request_it_answers(mode):
    # A client takes an answer by its id, whatever it was sent for: lists are found by content.
    answer = rogue_call(mode)
    assert "search_tickets" in answer.text and "lookup_customer" in answer.text, answer.text
    assert "refund" not in answer.text, answer.text
    if mode == "sse":
        assert "hello" not in answer.text, "a comment's text is not passed on"
    if mode != "json":
        # Passed on as plain UTF-8 events, whatever the server declared.
        assert answer.headers["content-type"] == "text/event-stream", answer.headers


def test_a_charset_cannot_make_the_client_read_a_list_deputyd_did_not():
    # To a UTF-7 reader the comment holds an event with every tool; deputyd passes the comment
    # on empty, as UTF-8.
    answer = rogue_call("utf7")
    assert answer.headers["content-type"] == "text/event-stream", answer.headers
    assert "refund" not in answer.text and "tools" not in answer.text, answer.text


def test_an_answer_deputyd_cannot_read_is_refused_not_passed_on():
    with pytest.raises(problems.AnswerRefused) as refused:
        rogue_call("gzip")
    assert refused.value.status == 502 and refused.value.source == "service-node", refused.value
    assert "compressed" in refused.value.detail and "refund" not in refused.value.detail


def a2a_message(text: str, skill: str | None) -> Message:
    return Message(
        role=Role.user,
        message_id=str(uuid.uuid4()),
        parts=[Part(root=TextPart(text=text))],
        metadata={"skill": skill} if skill else None,
    )


def a2a_http(task: deputy.Task) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        proxy=SUPPORT, headers=call_headers(task), trust_env=False, timeout=30.0
    )


def test_a2a_calls_are_judged_by_method_and_skill_and_the_card_names_the_verified_agent():
    async def go():
        task = alice()
        async with a2a_http(task) as http:
            raw_card = await http.get("http://writer/.well-known/agent-card.json")
            card = await A2ACardResolver(http, "http://writer").get_agent_card()
            client = A2AClient(httpx_client=http, agent_card=card)
            sent = await client.send_message(SendMessageRequest(
                id="1", params=MessageSendParams(message=a2a_message("Printer on fire. Send help.", "summarize"))))
            events = [event async for event in client.send_message_streaming(SendStreamingMessageRequest(
                id="2", params=MessageSendParams(message=a2a_message("Disk full. Again.", "summarize"))))]
            a2a_task = sent.root.result
            got = await client.get_task(GetTaskRequest(id="3", params=TaskQueryParams(id=a2a_task.id)))
            with pytest.raises(A2AClientHTTPError) as cancel:
                await client.cancel_task(CancelTaskRequest(id="4", params=TaskIdParams(id=a2a_task.id)))
            with pytest.raises(A2AClientHTTPError) as translate:
                await client.send_message(SendMessageRequest(
                    id="5", params=MessageSendParams(message=a2a_message("Bonjour.", "translate"))))
        async with deputy.AsyncAgent(SUPPORT) as agent:
            with pytest.raises(problems.BodyRefused) as rest:
                # A2A's HTTP+JSON binding is not judged by method, so it is refused.
                await agent.request("POST", "http://writer/v1/message:send", task=task,
                                    json={"message": {"role": "user", "parts": [{"text": "hi"}]}})
            with pytest.raises(deputy.PolicyDenied) as denied:
                await agent.request("POST", "http://writer/", task=task, json=CancelTaskRequest(
                    id="6", params=TaskIdParams(id=a2a_task.id)).model_dump(mode="json", exclude_none=True))
            seen = await reached(agent, "writer")
        assert "JSON-RPC" in rest.value.detail, rest.value.detail
        return raw_card, card, a2a_task, events, got, cancel.value, translate.value, denied.value, seen

    raw_card, card, a2a_task, events, got, cancel, translate, denied, seen = asyncio.run(go())
    # The card passes through as the agent wrote it; deputyd adds who answered, as proved by mTLS.
    assert raw_card.status_code == 200 and raw_card.json()["name"] == "writer"
    assert raw_card.headers["deputy-peer-id"] == WRITER
    assert card.name == "writer" and [s.id for s in card.skills] == ["summarize", "translate"]
    # message/send allowed: the task completed with the summary.
    assert a2a_task.status.state.value == "completed", a2a_task
    assert a2a_task.status.message.parts[0].root.text == "summary: Printer on fire"
    # message/stream allowed, and streamed: several events, the last one final.
    assert len(events) >= 3, events
    assert events[-1].root.result.final is True
    assert events[-1].root.result.status.message.parts[0].root.text == "summary: Disk full"
    assert got.root.result.id == a2a_task.id
    # tasks/cancel and an unlisted skill refused by the policy, before the agent.
    assert cancel.status_code == 403 and translate.status_code == 403
    assert denied.source == "this-node"
    assert any("may not call the A2A method tasks/cancel" in r for r in denied.reasons), denied.reasons
    assert [r for r in seen if r.get("a2a")] == [
        {"a2a": "message", "skill": "summarize"}, {"a2a": "message", "skill": "summarize"}], seen
