# Irreversible actions need a human: deletions, payments, and the tools listed as irreversible.
package deputy.authz

import rego.v1

approval_reasons contains sprintf("DELETE %s is irreversible", [input.request.path]) if {
	input.request.method == "DELETE"
}

approval_reasons contains "moving money is irreversible" if {
	startswith(input.request.path, "/payments")
	input.request.method in {"POST", "PUT", "PATCH"}
}

approval_reasons contains sprintf("the tool %s is irreversible", [input.request.mcp.tool]) if {
	input.request.mcp.tool in data.mcp.irreversible_tools
}
