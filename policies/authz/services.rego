# Which callers may call which service (by SPIFFE ID, `*` for any), and which agents may start
# tasks for which principals.
package deputy.authz

import rego.v1

deny contains msg if {
	not caller_allowed(actor.spiffe_id, target)
	msg := sprintf("%s may not call %s: it is not among data.services[%q].callers", [actor.spiffe_id, target, target])
}

caller_allowed(id, service) if id in data.services[service].callers

caller_allowed(_, service) if "*" in data.services[service].callers

deny contains msg if {
	input.direction == "outbound"
	input.task.new
	not may_originate(input.agent.name, input.principal)
	msg := sprintf("agent %s may not start tasks for %s (see data.originate[%q])", [input.agent.name, input.principal, input.agent.name])
}

may_originate(agent, principal) if {
	some pattern in data.originate[agent]
	endswith(pattern, "*")
	startswith(principal, trim_suffix(pattern, "*"))
}

may_originate(agent, principal) if principal in data.originate[agent]
