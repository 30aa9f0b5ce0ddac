"""A downstream API of the imitated Entra tenant: it accepts only the tenant's tokens whose
audience is the downstream app, as a real Entra-protected API would.

`GET /me` with such a token answers who the token is for and which app acts for them;
anything else gets a 401 with Entra's reason. The MCP server reaches it only with a token it
obtained by On-Behalf-Of, so a user's own token (audience: the MCP API) is refused here.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.peers.entra import EntraTokenFactory, OboError


class EntraDownstream:
    """Serves `GET /me` on 127.0.0.1 for `factory.downstream`, in a thread, until stopped."""

    def __init__(self, factory: EntraTokenFactory):
        app = factory.downstream
        audiences = [app.client_id, app.app_id_uri]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                if self.path != "/me":
                    return self._send(404, {"error": "not_found"})
                if scheme.lower() != "bearer" or not token:
                    return self._send(401, {"error": "invalid_token"})
                try:
                    claims = factory.verify(token, audiences)
                except OboError as exc:
                    return self._send(401, {"error": "invalid_token", **exc.body()})
                return self._send(200, {k: claims.get(k) for k in ME_CLAIMS})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/me"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> EntraDownstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


ME_CLAIMS = ("oid", "tid", "name", "preferred_username", "upn", "scp", "azp", "appid", "aud")
