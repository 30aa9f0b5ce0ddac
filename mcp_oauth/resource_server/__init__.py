"""The MCP resource server behind mcp_resource_server.py: the gate that answers 401/403 before
a tool runs, the introspection and JWT verifiers, the provider as discovered, On-Behalf-Of and
the server's own per-user store."""
