"""The learner's client behind client.py: discovery from the first 401, the client identity,
the sign-in modes, the token cache, the MCP session with step-up, the prompt, trace and demo."""
