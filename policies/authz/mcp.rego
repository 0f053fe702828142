# MCP tools: an agent may call only the tools listed for its SPIFFE ID.
package deputy.authz

import rego.v1

deny contains msg if {
	input.request.mcp.method == "tools/call"
	not input.request.mcp.tool in object.get(data.mcp.tools, actor.spiffe_id, [])
	msg := sprintf("%s may not call the MCP tool %s (see data.mcp.tools)", [actor.spiffe_id, object.get(input.request.mcp, "tool", "(unnamed)")])
}
