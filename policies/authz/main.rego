# Deputy's shipped policy: the decision every deputyd asks for, at both ends of every call.
#
# Each concern lives in its own file and adds to `deny` (why not) or `approval_reasons` (allowed
# only once a human approves). The decision is allowed when nothing denies.
package deputy.authz

import rego.v1

# The acting party: the local agent when it calls out, the mTLS peer when a call comes in.
actor := input.agent if input.direction == "outbound"

actor := input.peer if input.direction == "inbound"

# The service being called: the target outbound, the local agent inbound.
target := input.service.name if input.direction == "outbound"

target := input.agent.name if input.direction == "inbound"

default decision := {"allow": false, "reasons": ["no rule of the policy decided this call"]}

decision := object.union({"allow": true, "reasons": ["allowed: no rule denies this call"]}, obligations) if {
	count(deny) == 0
}

decision := {"allow": false, "reasons": sort([r | some r in deny])} if {
	count(deny) > 0
}

obligations := object.union(approval_obligation, scope_obligation)

default approval_obligation := {}

approval_obligation := {"approval": {"required": true, "reason": concat("; ", sort([r | some r in approval_reasons]))}} if {
	count(approval_reasons) > 0
}

# A narrower scope for the next link (see services.rego); absent when nothing narrows.
default scope_obligation := {}

scope_obligation := {"scope": narrowed_scope} if {
	count(narrowed_scope) > 0
	narrowed_scope != input.task.scope
}

# Fail closed on inputs that name nobody: every rule below assumes an actor and a target.
deny contains "the input names no acting party (input.agent outbound, input.peer inbound)" if {
	not actor.spiffe_id
}

deny contains "the input names no target (input.service outbound, input.agent inbound)" if {
	not target
}
