# A2A agents: a caller may use only the A2A methods listed for it (data.a2a.methods), and a
# message that names a skill only a skill listed for it (data.a2a.skills). Calls to a service
# marked `a2a = true` carry `input.request.a2a`.
package deputy.authz

import rego.v1

deny contains msg if {
	method := input.request.a2a.method
	not method in object.get(data.a2a.methods, actor.spiffe_id, [])
	msg := sprintf("%s may not call the A2A method %s (see data.a2a.methods)", [actor.spiffe_id, method])
}

deny contains msg if {
	skill := input.request.a2a.skill
	not skill in object.get(data.a2a.skills, actor.spiffe_id, [])
	msg := sprintf("%s may not ask for the A2A skill %s (see data.a2a.skills)", [actor.spiffe_id, skill])
}
