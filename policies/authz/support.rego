# Support agents and customer data (paths /customers/<id>/...): read only, in business hours,
# only their own team's customers, and only with read scopes.
#
# The rules below judge only support agents' customer calls, so they are gathered in one set
# behind that one check: a rule definition costs the engine about a microsecond even when its
# first condition fails, and every call is judged at both ends.
package deputy.authz

import rego.v1

support_customer_call if {
	startswith(input.request.path, "/customers/")
	actor.attributes.kind == "support"
}

deny contains msg if {
	support_customer_call
	some msg in support_denials
}

customer_id := split(input.request.path, "/")[2]

support_denials contains "support agents only read customer data (GET or HEAD)" if {
	not input.request.method in {"GET", "HEAD"}
}

support_denials contains msg if {
	not business_hours
	msg := sprintf("support agents read customer data only in business hours (%s, %d:00-%d:00 %s); it is %s %d:00", [
		concat(", ", data.business_hours.days), data.business_hours.start, data.business_hours.end,
		input.time.zone, input.time.weekday, input.time.hour,
	])
}

business_hours if {
	input.time.weekday in data.business_hours.days
	input.time.hour >= data.business_hours.start
	input.time.hour < data.business_hours.end
}

support_denials contains msg if {
	data.customers[customer_id].team != actor.attributes.team
	msg := sprintf("customer %s belongs to team %s, not to the agent's team %s", [customer_id, data.customers[customer_id].team, object.get(actor.attributes, "team", "(none)")])
}

support_denials contains msg if {
	not data.customers[customer_id]
	msg := sprintf("no customer %s is known to the policy (data.customers)", [customer_id])
}

support_denials contains "support agents read customer data only within a task with read scopes" if {
	not read_only_scopes
}

read_only_scopes if {
	count(input.task.scope) > 0
	every scope in input.task.scope {
		endswith(scope, ":read")
	}
}

# The same team rule for MCP tools that take a customer (data.mcp.customer_tools): the customer
# is the tool's argument /customer_id, which the tool's service declares for the policy to read
# (`arguments = ["/customer_id"]` in its stanza). A call whose customer the policy cannot see is
# denied. Listing such a tool is judged without arguments, so only calling it is checked.
support_tool_call if {
	input.request.mcp.tool in data.mcp.customer_tools
	actor.attributes.kind == "support"
	not listing
}

listing if input.phase == "list"

tool_customer := object.get(object.get(input.request.mcp, "arguments", {}), "/customer_id", "")

deny contains msg if {
	support_tool_call
	tool_customer == ""
	msg := sprintf("the tool %s takes a customer as /customer_id, which the policy did not see; declare `arguments = [\"/customer_id\"]` for its service", [input.request.mcp.tool])
}

deny contains msg if {
	support_tool_call
	tool_customer != ""
	team := object.get(object.get(data.customers, tool_customer, {}), "team", "(unknown)")
	team != object.get(actor.attributes, "team", "(none)")
	# The reason names the argument, not its value: arguments stay out of logs and records.
	msg := sprintf("the customer in /customer_id belongs to team %s, not to the agent's team %s", [team, object.get(actor.attributes, "team", "(none)")])
}
