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

# Who may start tasks for whom (data.originate, by SPIFFE ID), judged at both ends of every call
# of a task: outbound where the agent starts it, and on every hop after that against the chain's
# first link, so that an agent that signs a first link itself is refused where the call arrives.
deny contains msg if {
	origin := input.task.origin
	not may_originate(origin.agent, origin.principal)
	msg := sprintf("%s may not start tasks for %s (see data.originate[%q])", [origin.agent, origin.principal, origin.agent])
}

deny contains "the input's task names no origin (input.task.origin); upgrade deputyd" if {
	input.task
	not input.task.origin
}

may_originate(agent, principal) if {
	some pattern in data.originate[agent]
	endswith(pattern, "*")
	startswith(principal, trim_suffix(pattern, "*"))
}

may_originate(agent, principal) if principal in data.originate[agent]

# Least privilege per service: a service that lists the scopes it accepts
# (data.services[name].scopes) receives only those of the task's scopes, whatever the agent
# asked for; a task holding none of them may not call it.
accepted_scopes := data.services[input.service.name].scopes if input.direction == "outbound"

narrowed_scope := sort([s | some s in narrowed]) if accepted_scopes

# The task's scopes the service accepts, and the accepted scopes a task's wildcard covers.
# Exact matches first: most tasks name scopes as the service lists them, and a set lookup is
# far cheaper than splitting both scopes on `:`.
narrowed contains scope if {
	some scope in input.task.scope
	scope in accepted_scopes
}

narrowed contains scope if {
	some allowed in accepted_scopes
	contains(allowed, "*")
	some scope in input.task.scope
	scope_covers(allowed, scope)
}

narrowed contains allowed if {
	some scope in input.task.scope
	contains(scope, "*")
	some allowed in accepted_scopes
	scope_covers(scope, allowed)
}

# Deputy's scope rule: same number of `:` segments, each `*` or equal.
scope_covers(parent, child) if {
	p := split(parent, ":")
	c := split(child, ":")
	count(p) == count(c)
	every i, segment in p {
		segment in {"*", c[i]}
	}
}

deny contains msg if {
	input.task
	count(narrowed_scope) == 0
	msg := sprintf("none of the task's scopes %v is accepted by %s (data.services[%q].scopes: %v)", [input.task.scope, target, target, accepted_scopes])
}
