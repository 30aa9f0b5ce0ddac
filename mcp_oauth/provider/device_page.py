"""/device (RFC 8628 §3.3): the person types the user code shown on the device, sees the
consent page, and the decision is recorded once for the device's next poll."""

from __future__ import annotations

from urllib.parse import urlencode

from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from mcp_oauth.common.scopes import scope_set, scope_str
from mcp_oauth.provider.authorization_server import AuthorizationServer
from mcp_oauth.provider.consent import consent_page
from mcp_oauth.provider.oauth_request import read_parameters
from mcp_oauth.provider.pages import (
    csrf_ok,
    csrf_token,
    expired_form_page,
    login_page,
    message_page,
    signed_in,
    templates,
)
from mcp_oauth.provider.records import ClientRecord, DeviceRecord
from mcp_oauth.provider.scope_policy import decide_scopes

INVALID_CODE = "That code is not valid or has expired."


class DevicePage:
    def __init__(self, server: AuthorizationServer):
        self.server = server

    async def serve(self, request: Request) -> Response:
        account = await signed_in(request, self.server.accounts, self.server.store.sessions)
        if request.method == "GET":
            user_code = request.query_params.get("user_code", "")[:20]
            if account is None:
                query = f"?{urlencode({'user_code': user_code})}" if user_code else ""
                return login_page(request, f"/device{query}")
            return self.code_entry(request, user_code)
        try:
            form = dict(await read_parameters(request))
        except OAuth2Error:
            return message_page(request, 400, "Please try again", "The form was not understood.")
        if not csrf_ok(request, form):
            return expired_form_page(request)
        if account is None:
            return login_page(request, "/device")
        user_code = form.get("user_code", "").strip().upper()[:20]
        record = await run_in_threadpool(self.server.store.devices.find_by_user_code, user_code)
        client = record and await run_in_threadpool(self.server.store.clients.get, record.client_id)
        if record is None or client is None or record.is_expired() or record.decision is not None:
            return self.code_entry(request, user_code, INVALID_CODE, 400)
        resource = self.server.resources.get(record.resource or "")
        if "decision" not in form:
            return consent_page(
                request,
                client=client,
                account=account,
                requested=scope_set(record.scope),
                resource=resource,
                params=[("user_code", record.user_code)],
                action="/device",
                user_code=record.user_code,
            )
        return await self.decide(request, record, client, account, form["decision"] == "approve")

    async def decide(
        self, request: Request, record: DeviceRecord, client: ClientRecord, account, approved: bool
    ):
        decision = decide_scopes(
            scope_set(record.scope),
            client,
            account,
            self.server.resources.get(record.resource or ""),
        )
        decided = await run_in_threadpool(
            self.server.store.devices.decide,
            record.user_code,
            account.username,
            scope_str(decision.granted),
            approved and decision.grantable,
        )
        if not decided:
            return self.code_entry(request, record.user_code, INVALID_CODE, 400)
        if approved and decision.grantable:
            return message_page(
                request, 200, "Device connected", "You can return to your device.", is_error=False
            )
        return message_page(
            request,
            200,
            "Access denied",
            "The device was not given access. You can close this page.",
            is_error=False,
        )

    def code_entry(
        self, request: Request, user_code: str, error: str = "", status: int = 200
    ) -> Response:
        return templates.TemplateResponse(
            request,
            "device.html",
            {
                "title": "Connect a device",
                "csrf_token": csrf_token(request),
                "user_code": user_code,
                "error": error,
            },
            status_code=status,
        )
