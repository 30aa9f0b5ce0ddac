"""/authorize (RFC 6749 §4.1): Authlib validates the request, the person signs in and sees the
consent page, and the decision goes back to the client's redirect URI with `iss` (RFC 9207).
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mcp_oauth.provider.authorization_server import (
    AuthorizationServer,
    authlib_refused_error_text,
)
from mcp_oauth.provider.client_checks import may_redirect_error
from mcp_oauth.provider.consent import consent_page
from mcp_oauth.provider.identity import FRESH_SIGN_IN_PARAMETERS, login_hint, sign_in_demand
from mcp_oauth.provider.pages import (
    csrf_ok,
    expired_form_page,
    invalid_link_page,
    login_page,
    message_page,
    signed_in,
)
from mcp_oauth.provider.scope_policy import requested_scopes

FORM_FIELDS = {"csrf_token", "decision"}  # what the consent form adds to the request


class AuthorizePage:
    def __init__(self, server: AuthorizationServer):
        self.server = server

    def client_redirect(self, request: Request, location: str) -> Response:
        """Every redirect back to a client carries `iss` (RFC 9207); one answering the
        consent form's POST is a 303, so the browser follows it with a GET (RFC 9700 §4.12)."""
        location = add_params_to_uri(location, [("iss", self.server.issuer_url)])
        return RedirectResponse(location, status_code=303 if request.method == "POST" else 302)

    def oauth_error(self, request: Request, error: OAuth2Error, *, redirect: bool) -> Response:
        """Redirect the error to the client only when allowed (`may_redirect_error`);
        otherwise show it here."""
        if error.redirect_uri and redirect:
            status, _, headers = error()
            return self.client_redirect(request, dict(headers)["Location"])
        return invalid_link_page(request, error.description or error.error)

    async def validated(self, request: Request, oauth_request, account):
        """Authlib's validation of an authorization request: (grant, None), or (None, the
        response that reports its error)."""
        try:
            grant = await run_in_threadpool(self.server.get_consent_grant, oauth_request, account)
            return grant, None
        except OAuth2Error as error:
            redirect = may_redirect_error(oauth_request.client, error.redirect_uri)
            return None, self.oauth_error(request, error, redirect=redirect)
        except ValueError as exc:
            if not authlib_refused_error_text(exc):
                raise
            return None, invalid_link_page(
                request, "A parameter contains characters that are not allowed."
            )

    async def serve(self, request: Request) -> Response:
        try:
            oauth_request = await self.server.oauth2_request(request)
        except OAuth2Error as error:
            return self.oauth_error(request, error, redirect=False)
        if request.method == "POST":
            return await self.decide(request, oauth_request)
        account = await signed_in(request, self.server.accounts, self.server.store.sessions)
        grant, problem = await self.validated(request, oauth_request, account)
        if problem:
            return problem
        if account is None:
            target = f"/authorize?{request.url.query}"
            hint = login_hint(oauth_request.payload.data)
            return login_page(request, target, client=grant.client, username=hint)
        signed_in_at = await run_in_threadpool(
            self.server.store.sessions.started_at, request.session.get("sid", "")
        )
        demand = sign_in_demand(oauth_request.payload.data, signed_in_at, int(time.time()))
        if isinstance(demand, OAuth2Error):
            redirect = may_redirect_error(grant.client, demand.redirect_uri)
            return self.oauth_error(request, demand, redirect=redirect)
        if demand:  # a fresh sign-in, then the request again without what asked for it
            kept = [
                (k, v) for k, v in oauth_request.payload.items if k not in FRESH_SIGN_IN_PARAMETERS
            ]
            return login_page(request, "/authorize?" + urlencode(kept), client=grant.client)
        return consent_page(
            request,
            client=grant.client,
            account=account,
            requested=requested_scopes(grant.client, oauth_request.payload.scope),
            resource=self.server.resources.get(oauth_request.resource or ""),
            params=oauth_request.payload.items,
            action="/authorize",
            redirect_uri=oauth_request.payload.redirect_uri,
        )

    async def decide(self, request: Request, oauth_request) -> Response:
        form = oauth_request.payload.data
        if not csrf_ok(request, form):
            return expired_form_page(request)
        params = [(k, v) for k, v in oauth_request.payload.items if k not in FORM_FIELDS]
        account = await signed_in(request, self.server.accounts, self.server.store.sessions)
        if account is None:
            return login_page(request, "/authorize?" + urlencode(params))
        oauth_request = self.server.make_request("POST", "/authorize", request, params)
        grant, problem = await self.validated(request, oauth_request, account)
        if problem:
            return problem
        approved = form.get("decision") == "approve"
        oauth_request.auth_time = await run_in_threadpool(
            self.server.store.sessions.started_at, request.session.get("sid", "")
        )
        response = await run_in_threadpool(
            self.server.create_authorization_response,
            oauth_request,
            account if approved else None,
            grant,
        )
        location = response.headers.get("location")
        if response.status_code != 302 or not location:
            return message_page(
                request, 400, "Something was wrong with this request", response.body.decode()
            )
        return self.client_redirect(request, location)
