# Irreversible actions need a human: deletions, payments, and the tools listed as irreversible.
# An approval is asked for where a call starts (the caller's deputyd holds the call until its
# operator approves it), so these rules apply to outbound calls.
package deputy.authz

import rego.v1

approval_reasons contains sprintf("DELETE %s is irreversible", [input.request.path]) if {
	input.direction == "outbound"
	input.request.method == "DELETE"
}

approval_reasons contains "moving money is irreversible" if {
	input.direction == "outbound"
	startswith(input.request.path, "/payments")
	input.request.method in {"POST", "PUT", "PATCH"}
}

approval_reasons contains sprintf("the tool %s is irreversible", [input.request.mcp.tool]) if {
	input.direction == "outbound"
	input.request.mcp.tool in data.mcp.irreversible_tools
}
