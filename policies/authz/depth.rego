# Delegation depth: how many hops a task may take, per target service or by default.
package deputy.authz

import rego.v1

max_depth := object.get(data.limits.max_depth_by_service, target, data.limits.max_depth)

# Outbound, the chain is what the agent received; the call adds one link.
depth := count(input.chain) + 1 if input.direction == "outbound"

depth := count(input.chain) if input.direction == "inbound"

deny contains msg if {
	depth > max_depth
	msg := sprintf("delegation depth %d exceeds the limit of %d for %s", [depth, max_depth, target])
}
