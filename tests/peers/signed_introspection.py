"""A tiny authorization server that answers introspection with signed JWTs (RFC 9701), real
ones or forged in one chosen way, for the resource server's verification tests.

Glewlwyd serves real signed answers (tests/test_interop_glewlwyd.py) but cannot be made to
forge one; this peer can. It serves OpenID discovery (offering RS256 and, as Glewlwyd does,
HMAC), its key set, and an introspection endpoint whose answer about any token is active, for
`resource`, signed with its own RSA key, unless `forge` names a flaw:

  foreign_key   signed by another RSA key under the peer's own kid
  hs256_public  HS256 with the peer's public key (PEM) as the HMAC secret: algorithm confusion
  none          alg none, no signature
  wrong_alg     RS384 with the peer's key, whose key set entry says RS256
  wrong_iss     another issuer
  stale_iat     issued ten minutes ago: a replayed answer
  no_iat        no iat at all
  wrong_typ     typ JWT, as an ID token or access token of the provider would say
  unsigned      plain RFC 7662 JSON although a signed answer was asked for
  other_aud     addressed to another resource server's client id
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

CLIENT_ID = "mcp-resource-server"
KID = "answer-key"


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SignedIntrospectionPeer:
    """Serves discovery, JWKS and signed introspection answers on 127.0.0.1 until stopped."""

    def __init__(self, resource: str):
        self.resource = resource
        self.forge: str | None = None
        self.key = RSAKey.generate_key(2048, {"kid": KID, "alg": "RS256", "use": "sig"}, True)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> SignedIntrospectionPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "introspection_endpoint": f"{self.issuer}/introspect",
            "jwks_uri": f"{self.issuer}/jwks",
            "introspection_signing_alg_values_supported": ["HS256", "RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def answer(self) -> dict[str, Any]:
        """The RFC 7662 answer inside: active, for the resource, naming no iss."""
        now = int(time.time())
        return {
            "active": True,
            "scope": "read",
            "client_id": "mcp-client",
            "sub": "alice",
            "aud": self.resource,
            "exp": now + 600,
            "iat": now,
        }

    def signed_answer(self) -> tuple[str, str]:
        """(content type, body) of the introspection response, as `forge` says."""
        if self.forge == "unsigned":
            return "application/json", json.dumps(self.answer())
        header = {"typ": "token-introspection+jwt", "alg": "RS256", "kid": KID}
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": int(time.time()),
            "token_introspection": self.answer(),
        }
        key = self.key
        match self.forge:
            case "foreign_key":
                key = RSAKey.generate_key(2048, {"kid": KID}, private=True)
            case "wrong_alg":
                header["alg"] = "RS384"
                key = RSAKey.import_key(self.key.as_dict(private=True) | {"alg": "RS384"})
            case "wrong_iss":
                claims["iss"] = "http://127.0.0.1:9/evil"
            case "stale_iat":
                claims["iat"] -= 600
            case "no_iat":
                del claims["iat"]
            case "wrong_typ":
                header["typ"] = "JWT"
            case "other_aud":
                claims["aud"] = "another-resource-server"
            case "hs256_public" | "none":
                header["alg"] = "HS256" if self.forge == "hs256_public" else "none"
                signing_input = f"{_b64(header)}.{_b64(claims)}"
                secret = self.key.as_pem(private=False)
                mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
                signature = _b64(mac) if self.forge == "hs256_public" else ""
                return "application/token-introspection+jwt", f"{signing_input}.{signature}"
        body = jwt.encode(header, claims, key, algorithms=[header["alg"]])
        return "application/token-introspection+jwt", body


def _handler(peer: SignedIntrospectionPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, content_type: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/.well-known/openid-configuration":
                self._send(200, "application/json", json.dumps(peer.metadata()))
            elif self.path == "/jwks":
                self._send(200, "application/json", json.dumps(peer.jwks()))
            else:
                self._send(404, "application/json", "{}")

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/introspect" or not self.headers.get("Authorization"):
                self._send(401, "application/json", '{"error": "invalid_client"}')
                return
            self._send(200, *peer.signed_answer())

    return Handler
