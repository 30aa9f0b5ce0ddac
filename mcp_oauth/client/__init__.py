"""The learner's client behind client.py: discovery from the first 401, the client identity,
the sign-in modes and the one authorization code flow, the token requests and cache, the MCP
session with step-up, the prompt's tools, trace and demo; `sdk_internals` fences what it takes
from FastMCP and the MCP SDK beyond their public API."""
