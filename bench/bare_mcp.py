"""The no-auth baseline: a bare FastMCP server with the resource server's `get_user_profile`
tool (same name, same answer shape, a fixed caller instead of a token), served the way
mcp_resource_server.py serves MCP: stateless streamable HTTP at /mcp, host protection on.

    python bench/bare_mcp.py --port P
"""

from __future__ import annotations

import argparse
import gc
import time
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastmcp import FastMCP

mcp = FastMCP("bare baseline", mask_error_details=True)
EXPIRES = int(time.time()) + 3600


@mcp.tool
def get_user_profile() -> dict[str, Any]:
    """Who you are according to your token: user, subject, scopes, client and expiry."""
    return {
        "username": "mcp-resource-server",
        "subject": "mcp-resource-server",
        "scopes": ["admin", "read", "write"],
        "client_id": "mcp-resource-server",
        "token_expires_at": datetime.fromtimestamp(EXPIRES, UTC).isoformat(),
        "token_expires_in": max(0, int(EXPIRES - time.time())),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = mcp.http_app(
        path="/mcp",
        stateless_http=True,
        host_origin_protection="auto",
        allowed_hosts=[f"{args.host}:{args.port}"],
    )
    gc.collect()  # as the resource server does once started: start-up objects out of the
    gc.freeze()  # collector's sight, so the ratio compares the work of a call, not heap sizes
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
