"""Machinery behind oauth_provider.py, mcp_resource_server.py and client.py.

One module per concern; the three top-level scripts tell the story and import from here.
"""
