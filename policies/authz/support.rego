# Support agents and customer data (paths /customers/<id>/...): read only, in business hours,
# only their own team's customers, and only with read scopes.
package deputy.authz

import rego.v1

customer_call if startswith(input.request.path, "/customers/")

support_actor if actor.attributes.kind == "support"

customer_id := split(input.request.path, "/")[2]

deny contains "support agents only read customer data (GET or HEAD)" if {
	customer_call
	support_actor
	not input.request.method in {"GET", "HEAD"}
}

deny contains msg if {
	customer_call
	support_actor
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

deny contains msg if {
	customer_call
	support_actor
	data.customers[customer_id].team != actor.attributes.team
	msg := sprintf("customer %s belongs to team %s, not to the agent's team %s", [customer_id, data.customers[customer_id].team, object.get(actor.attributes, "team", "(none)")])
}

deny contains msg if {
	customer_call
	support_actor
	not data.customers[customer_id]
	msg := sprintf("no customer %s is known to the policy (data.customers)", [customer_id])
}

deny contains "support agents read customer data only within a task with read scopes" if {
	customer_call
	support_actor
	not read_only_scopes
}

read_only_scopes if {
	count(input.task.scope) > 0
	every scope in input.task.scope {
		endswith(scope, ":read")
	}
}
