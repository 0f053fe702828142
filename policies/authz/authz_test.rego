package deputy.authz_test

import rego.v1

# Full references on purpose: regorus 0.14 ignores `with` on a rule reached through an
# import alias (`import data.deputy.authz` then `authz.decision`), where OPA honours it.


monday_10 := {"unix": 1795683600, "rfc3339": "2026-11-23T10:00:00+01:00", "zone": "Europe/Paris", "weekday": "Monday", "hour": 10}

sunday_10 := object.union(monday_10, {"weekday": "Sunday"})

support_eu := {"spiffe_id": "spiffe://example.org/agent/support-eu", "name": "support-eu", "attributes": {"kind": "support", "team": "eu"}}

crm_call := {
	"version": 1,
	"direction": "outbound",
	"agent": support_eu,
	"service": {"name": "crm", "spiffe_id": "spiffe://example.org/agent/crm", "attributes": {}},
	"principal": "user:alice@example.org",
	"task": {"id": "t-1", "new": false, "scope": ["customers:read"], "origin": {"agent": "spiffe://example.org/agent/frontdoor", "principal": "user:alice@example.org"}},
	"chain": [{"iss": "spiffe://example.org/agent/frontdoor", "aud": "spiffe://example.org/agent/support-eu", "scope": ["customers:read"], "iat": 1795683500, "exp": 1795684100}],
	"request": {"method": "GET", "path": "/customers/c-1001/orders", "query": {}, "headers": {}},
	"time": monday_10,
}

test_support_reads_its_own_team_customer_in_business_hours if {
	data.deputy.authz.decision.allow with input as crm_call
}

test_support_may_not_read_another_team_customer if {
	d := data.deputy.authz.decision with input as object.union(crm_call, {"request": {"method": "GET", "path": "/customers/c-2002", "query": {}, "headers": {}}})
	not d.allow
	some r in d.reasons
	contains(r, "belongs to team us")
}

test_support_reads_only_in_business_hours if {
	d := data.deputy.authz.decision with input as object.union(crm_call, {"time": sunday_10})
	not d.allow
	some r in d.reasons
	contains(r, "business hours")
}

test_support_needs_read_scopes if {
	d := data.deputy.authz.decision with input as object.union(crm_call, {"task": {"id": "t-1", "new": false, "scope": ["customers:write"]}})
	not d.allow
}

test_support_does_not_write_customer_data if {
	d := data.deputy.authz.decision with input as object.union(crm_call, {"request": {"method": "PUT", "path": "/customers/c-1001", "query": {}, "headers": {}}})
	not d.allow
}

test_unlisted_caller_is_denied if {
	d := data.deputy.authz.decision with input as object.union(crm_call, {"service": {"name": "payments", "spiffe_id": "spiffe://example.org/agent/payments", "attributes": {}}})
	not d.allow
	some r in d.reasons
	contains(r, "may not call payments")
}

test_inbound_checks_the_peer if {
	inbound := object.union(crm_call, {
		"direction": "inbound",
		"agent": {"spiffe_id": "spiffe://example.org/agent/crm", "name": "crm", "attributes": {}},
		"peer": {"spiffe_id": "spiffe://example.org/agent/support-eu", "trust_domain": "example.org", "attributes": {"kind": "support", "team": "eu"}},
	})
	data.deputy.authz.decision.allow with input as inbound
	intruder := object.union(inbound, {"peer": {"spiffe_id": "spiffe://other.org/agent/x", "trust_domain": "other.org", "attributes": {}}})
	not data.deputy.authz.decision.allow with input as intruder
}

test_depth_is_limited_per_service if {
	links := [l | some i in numbers.range(1, 4); l := crm_call.chain[0]]
	not data.deputy.authz.decision.allow with input as object.union(crm_call, {"chain": links})
}

test_origination_follows_data_originate if {
	origin := {"agent": support_eu.spiffe_id, "principal": "user:alice@example.org"}
	start := object.union(crm_call, {"task": {"id": "t-2", "new": true, "scope": ["customers:read"], "origin": origin}, "chain": []})
	data.deputy.authz.decision.allow with input as start
	batch := {"principal": "service:batch", "task": {"origin": {"principal": "service:batch"}}}
	not data.deputy.authz.decision.allow with input as object.union(start, batch)
}

test_origination_is_judged_again_on_every_hop if {
	# A first link that support-eu signed for service:batch, arriving at crm's deputyd.
	forged := object.union(crm_call, {
		"direction": "inbound",
		"agent": {"spiffe_id": "spiffe://example.org/agent/crm", "name": "crm", "attributes": {}},
		"peer": {"spiffe_id": support_eu.spiffe_id, "trust_domain": "example.org", "attributes": {}},
		"principal": "service:batch",
		"task": {"origin": {"agent": support_eu.spiffe_id, "principal": "service:batch"}},
	})
	d := data.deputy.authz.decision with input as forged
	not d.allow
	some r in d.reasons
	contains(r, "may not start tasks for service:batch")
}

test_a_task_without_an_origin_is_denied if {
	d := data.deputy.authz.decision with input as json.remove(crm_call, ["task/origin"])
	not d.allow
	some r in d.reasons
	contains(r, "names no origin")
}

tickets_mcp(tool) := triage_mcp({"method": "tools/call", "tool": tool})

triage_mcp(mcp) := object.union(crm_call, {
	"agent": {"spiffe_id": "spiffe://example.org/agent/triage", "name": "triage", "attributes": {}},
	"service": {"name": "tools", "spiffe_id": "spiffe://example.org/agent/tools", "attributes": {}},
	"request": {"method": "POST", "path": "/mcp", "query": {}, "headers": {}, "mcp": mcp},
})

test_mcp_tools_are_allowlisted_per_agent if {
	data.deputy.authz.decision.allow with input as tickets_mcp("search_tickets")
	d := data.deputy.authz.decision with input as tickets_mcp("drop_database")
	not d.allow
	some r in d.reasons
	contains(r, "drop_database")
}

test_an_mcp_call_naming_no_tool_is_denied if {
	d := data.deputy.authz.decision with input as triage_mcp({"method": "tools/call"})
	not d.allow
	some r in d.reasons
	contains(r, "(unnamed)")
}

test_irreversible_actions_need_approval if {
	d := data.deputy.authz.decision with input as object.union(tickets_mcp("search_tickets"), {"request": {"method": "DELETE", "path": "/tickets/9", "query": {}, "headers": {}}})
	d.approval.required
	contains(d.approval.reason, "irreversible")
}

test_an_input_without_an_actor_is_denied if {
	d := data.deputy.authz.decision with input as object.remove(crm_call, ["agent"])
	not d.allow
}

tickets_call(scope) := object.union(crm_call, {
	"agent": {"spiffe_id": "spiffe://example.org/agent/triage", "name": "triage", "attributes": {}},
	"service": {"name": "tickets", "spiffe_id": "spiffe://example.org/agent/tickets", "attributes": {}},
	"task": {"id": "t-1", "new": false, "scope": scope},
	"request": {"method": "GET", "path": "/tickets/42", "query": {}, "headers": {}},
})

test_a_service_receives_only_the_scopes_it_accepts if {
	d := data.deputy.authz.decision with input as tickets_call(["users:read", "tickets:read"])
	d.allow
	d.scope == ["tickets:read"]
}

test_a_wildcard_scope_narrows_to_what_the_service_accepts if {
	d := data.deputy.authz.decision with input as tickets_call(["tickets:*"])
	d.allow
	d.scope == ["tickets:read", "tickets:write"]
}

test_a_service_accepting_a_wildcard_receives_the_task_scopes_it_covers if {
	d := data.deputy.authz.decision with input as tickets_call(["tickets:read", "users:read", "tickets:write:all"])
		with data.services.tickets.scopes as ["tickets:*"]
	d.allow
	d.scope == ["tickets:read"]
}

test_a_task_with_no_accepted_scope_may_not_call_the_service if {
	d := data.deputy.authz.decision with input as tickets_call(["users:read"])
	not d.allow
	some r in d.reasons
	contains(r, "none of the task's scopes")
}

test_nothing_narrows_when_the_scopes_already_fit if {
	d := data.deputy.authz.decision with input as tickets_call(["tickets:read"])
	d.allow
	not d.scope
}
