"""How the conformance suite runs client.py: the command it is given, with the suite's URL.

The suite runs `<command> <server-url>` with the scenario's name in MCP_CONFORMANCE_SCENARIO
and, for some scenarios, credentials in MCP_CONFORMANCE_CONTEXT (JSON). This translates that
contract into client.py's own flags and environment, nothing more: the client signs in through
its default browser mode (`browser.py` plays the browser), lists the tools and calls the
suite's `test-tool`, as the suite's reference client does. Each run gets an empty token cache.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENT = HERE.parent.parent / "client.py"
# The URL the suite expects as client id when the provider supports metadata documents.
CLIENT_METADATA_URL = "https://conformance-test.local/client-metadata.json"


def main() -> None:
    server_url = sys.argv[-1]
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mcp-conformance-cache-")
    env["BROWSER"] = str(HERE / "browser.py")
    env.pop("DISPLAY", None)
    args = [sys.executable, str(CLIENT), "--url", server_url]
    args += ["--client-metadata-url", CLIENT_METADATA_URL]
    if "client_id" in context:
        env["MCP_CLIENT_ID"] = context["client_id"]
    if "client_secret" in context:
        env["MCP_CLIENT_SECRET"] = context["client_secret"]
    args += ["call", "test-tool"]
    os.execve(sys.executable, args, env)


if __name__ == "__main__":
    main()
