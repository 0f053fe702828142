# MCP tools: an agent may call only the tools listed for its SPIFFE ID.
package deputy.authz

import rego.v1

# A tools/call that names no tool is denied too. The tool is read with a default on purpose:
# `not input.request.mcp.tool in allowed` with the tool undefined is decided differently by OPA
# (the rule does not fire) and regorus (it fires); the conformance run caught it.
deny contains msg if {
	input.request.mcp.method == "tools/call"
	tool := object.get(input.request.mcp, "tool", "")
	not tool in object.get(data.mcp.tools, actor.spiffe_id, [])
	msg := sprintf("%s may not call the MCP tool %s (see data.mcp.tools)", [actor.spiffe_id, tool_name(tool)])
}

tool_name(tool) := "(unnamed)" if tool == ""

tool_name(tool) := tool if tool != ""
