"""The MCP resource server behind mcp_resource_server.py: the gate that answers 401/403 before
a tool runs (gate, tool_scopes, challenges, resource_metadata), the verifiers it chooses
between (verifier_choice; introspection; jwt_verifier with key_set, jwt_claims and entra), the
provider as discovered, On-Behalf-Of, the server's own per-user store, and fastmcp_internals,
the one place that leans on FastMCP / MCP SDK details beyond their documented API."""
