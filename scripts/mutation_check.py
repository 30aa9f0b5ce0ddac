#!/usr/bin/env python3
"""Mutation check: each SECURITY.md promise, switched off one line at a time, must fail its tests.

    .venv/bin/python scripts/mutation_check.py            # every mutation, one at a time
    .venv/bin/python scripts/mutation_check.py --list     # the table
    .venv/bin/python scripts/mutation_check.py --only pkce-removed rs-iss-check-off -j 2

First the baseline: every paired test must pass on an unmutated copy (otherwise a "kill"
means nothing). Then, for each named mutation: copy the repository's files (tracked, and
untracked ones git does not ignore) to a temporary folder, replace the original snippet
(which must occur exactly once, else the mutation is STALE: the code moved and the table
must follow) and run only the paired tests there. A mutation is KILLED when those tests
fail, SURVIVED when they pass. Exit status 0 only when every mutation selected is killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = Path("tests/peers/oidc_provider/node_modules")  # ignored by git, needed by peers


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    promise: str
    """The promise it breaks, as SECURITY.md words it."""
    tests: tuple[str, ...]
    """Node ids under tests/ that must fail."""


AS = "authorization server: "
RS = "resource server: "
SEC, PROV, PROM = "test_security.py::", "test_provider.py::", "test_promises_provider.py::"
CONC, REPL, RSX = "test_concurrency.py::", "test_replicas.py::", "test_resource_server.py::"
PRS = "test_promises_resource_server.py::"

MUTATIONS = [
    # -- the authorization server ------------------------------------------------------------
    Mutation(
        "redirect-uri-suffix-ignored",
        "mcp_oauth/provider/client_checks.py",
        '    if not (requested.startswith(before + ":") and requested.endswith(after)):',
        '    if not requested.startswith(before + ":"):',
        AS + "Redirect URIs match exactly; only the port of a registered loopback URI may vary",
        (SEC + "test_loopback_redirect_uri_lookalikes_are_refused",),
    ),
    Mutation(
        "login-next-not-sanitized",
        "mcp_oauth/provider/sign_in.py",
        '    if target.startswith(("/authorize?", "/device"))'
        ' and not target.startswith(("//", "/\\\\")):',
        "    if True:",
        AS + "No open redirect: sign-in `next` stays on the provider",
        (
            SEC + "test_login_next_never_redirects_off_site",
            SEC + "test_login_next_is_sanitized_to_a_provider_page",
        ),
    ),
    Mutation(
        "errors-redirected-to-any-client",
        "mcp_oauth/provider/client_checks.py",
        "    return (client is not None and client.preregistered)"
        " or is_loopback_redirect(redirect_uri)",
        "    return True",
        AS + "errors for clients the operator did not register go back only to loopback URIs",
        (
            SEC + "test_no_silent_error_redirect_to_a_freshly_registered_web_client",
            SEC + "test_no_silent_error_redirect_to_a_freshly_registered_web_client_when_signed_in",
        ),
    ),
    Mutation(
        "pkce-removed",
        "oauth_provider.py",
        "        AuthorizationCodeGrant, [S256CodeChallenge(required=True), ResourceIndicator()]",
        "        AuthorizationCodeGrant, [ResourceIndicator()]",
        AS + "PKCE S256 for every client: no code without a challenge, none without its verifier",
        (
            PROV + "test_missing_pkce_is_refused_by_redirect",
            PROV + "test_wrong_verifier_fails",
            SEC + "test_consent_form_without_challenge_issues_no_code",
        ),
    ),
    Mutation(
        "code-lives-50-minutes",
        "mcp_oauth/provider/grants.py",
        "AUTHORIZATION_CODE_LIFETIME = 300",
        "AUTHORIZATION_CODE_LIFETIME = 3000",
        AS + "Codes live 300 s",
        (SEC + "test_code_lives_at_most_five_minutes",),
    ),
    Mutation(
        "code-not-bound-to-client",
        "mcp_oauth/provider/grants.py",
        "        if record.client_id != client.client_id or record.is_expired():",
        "        if record.is_expired():",
        AS + "Codes are bound to client, redirect URI and resource",
        (
            SEC + "test_code_is_bound_to_the_client_even_when_it_authenticates",
            PROV + "test_code_is_bound_to_client",
        ),
    ),
    Mutation(
        "refresh-replay-keeps-family",
        "mcp_oauth/provider/grants.py",
        "                self._revoke_replayed(token)",
        "                pass",
        AS + "Refresh tokens rotate; a replay revokes the whole family",
        (PROV + "test_refresh_replay_revokes_the_family",),
    ),
    Mutation(
        "token-not-bound-to-client",
        "mcp_oauth/provider/records.py",
        "        return self.client_id == client.get_client_id()",
        "        return True",
        AS + "refresh tokens bound to their client; a client cannot revoke another's token",
        (
            SEC + "test_refresh_token_is_bound_to_its_client",
            SEC + "test_another_client_cannot_revoke_a_token",
        ),
    ),
    Mutation(
        "refresh-ignores-users-yaml",
        "mcp_oauth/provider/grants.py",
        "        scope = scope_str(scope_set(self.request.payload.scope or old.scope) & allowed)",
        "        scope = scope_str(scope_set(self.request.payload.scope or old.scope))",
        AS + "refresh: scope never widens; users.yaml allowances apply at every refresh",
        (PROM + "test_a_refresh_gets_only_what_users_yaml_allows_now",),
    ),
    Mutation(
        "refresh-race-two-winners",
        "mcp_oauth/provider/storage/tokens.py",
        "                    tokens.c.used_at.is_(None),\n"
        "                    tokens.c.revoked_at.is_(None),\n",
        "                    tokens.c.revoked_at.is_(None),\n",
        AS
        + "Single use holds under races, on one replica or several: one winner per refresh token",
        (
            CONC + "test_simultaneous_refreshes_of_one_token_have_exactly_one_winner",
            REPL + "test_a_refresh_raced_on_both_replicas_has_one_winner",
        ),
    ),
    Mutation(
        "code-race-two-winners",
        "mcp_oauth/provider/storage/codes.py",
        "                    authorization_codes.c.used_at.is_(None),\n",
        "",
        AS + "Single use holds under races: one winner per code",
        (
            CONC + "test_simultaneous_redemptions_of_one_code_have_exactly_one_winner",
            REPL + "test_a_code_raced_on_both_replicas_has_one_winner",
        ),
    ),
    Mutation(
        "device-code-race-two-winners",
        "mcp_oauth/provider/storage/devices.py",
        "                    device_codes.c.used_at.is_(None),\n",
        "",
        AS + "Single use holds under races: one winner per device code",
        (CONC + "test_simultaneous_polls_of_an_approved_device_code_get_one_set_of_tokens",),
    ),
    Mutation(
        "rotation-ignores-family-revocation",
        "mcp_oauth/provider/storage/tokens.py",
        "            if not _lock_family(conn, old.family_id):",
        "            if False:",
        AS + "a revocation racing a refresh leaves nothing alive",
        (
            CONC + "test_revocation_racing_a_refresh_leaves_no_live_token",
            CONC + "test_storage_revocation_racing_a_rotation_leaves_nothing_live",
        ),
    ),
    Mutation(
        "password-grant-registered",
        "oauth_provider.py",
        "    server.register_grant(ClientCredentialsGrant)",
        "    server.register_grant(ClientCredentialsGrant); server.register_grant(__import__("
        '"authlib.oauth2.rfc6749.grants", fromlist=["x"]).ResourceOwnerPasswordCredentialsGrant)',
        AS + "No implicit or hybrid flow, no password or assertion grant",
        (SEC + "test_no_password_or_assertion_grants_even_for_confidential_clients",),
    ),
    Mutation(
        "implicit-grant-registered",
        "oauth_provider.py",
        "    server.register_grant(RefreshTokenGrant)",
        "    server.register_grant(RefreshTokenGrant); server.register_grant(__import__("
        '"authlib.oauth2.rfc6749.grants", fromlist=["x"]).ImplicitGrant)',
        AS + "No implicit or hybrid flow",
        (SEC + "test_no_implicit_or_hybrid_response_type",),
    ),
    Mutation(
        "any-client-introspects-any-token",
        "mcp_oauth/provider/endpoints.py",
        "        return client.resource_server or token.client_id == client.client_id",
        "        return True",
        AS + "only resource-server clients see other clients' tokens",
        (PROV + "test_introspection_by_a_client_that_is_not_a_resource_server",),
    ),
    Mutation(
        "introspection-for-public-clients",
        "mcp_oauth/provider/endpoints.py",
        "    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH\n\n    def check_permission",
        "    CLIENT_AUTH_METHODS = ANY_CLIENT_AUTH\n\n    def check_permission",
        AS + "Introspection, revocation and the admin API need client authentication",
        (PROV + "test_introspection_requires_client_authentication",),
    ),
    Mutation(
        "admin-api-for-any-client",
        "mcp_oauth/provider/authorization_server.py",
        "        if not client.resource_server:",
        "        if False:",
        AS + "the admin API needs a resource-server client",
        (PROM + "test_the_admin_api_refuses_a_client_that_is_not_a_resource_server",),
    ),
    Mutation(
        "no-iss-on-authorization-responses",
        "mcp_oauth/provider/authorize_page.py",
        '        location = add_params_to_uri(location, [("iss", self.server.issuer_url)])',
        "        location = location",
        AS + "`iss` on every authorization response (success, deny, error), once (RFC 9207)",
        (SEC + "test_every_authorization_response_carries_iss_once",),
    ),
    Mutation(
        "throttle-cap-3000-seconds",
        "mcp_oauth/provider/storage/login_throttle.py",
        "MAX_LOGIN_BACKOFF = 300  # seconds",
        "MAX_LOGIN_BACKOFF = 3000  # seconds",
        AS + "Sign-in: a doubling wait (2 s … 300 s)",
        (SEC + "test_the_wait_after_many_failures_is_at_most_five_minutes",),
    ),
    Mutation(
        "failures-remembered-6-days",
        "mcp_oauth/provider/storage/login_throttle.py",
        "LOGIN_FAILURE_WINDOW = 900  # seconds",
        "LOGIN_FAILURE_WINDOW = 518400  # seconds",
        AS + "Sign-in: failures are forgotten after 15 min",
        (SEC + "test_old_login_failures_are_forgotten_after_fifteen_minutes",),
    ),
    Mutation(
        "failures-forgotten-after-5-minutes",
        "mcp_oauth/provider/storage/login_throttle.py",
        "LOGIN_FAILURE_WINDOW = 900  # seconds",
        "LOGIN_FAILURE_WINDOW = 300  # seconds",
        AS + "Sign-in: failures are forgotten after 15 min (not sooner)",
        (SEC + "test_login_failures_within_fifteen_minutes_still_count",),
    ),
    Mutation(
        "fifty-free-failures",
        "mcp_oauth/provider/storage/login_throttle.py",
        "FREE_LOGIN_FAILURES = 5  # attempts",
        "FREE_LOGIN_FAILURES = 50  # attempts",
        AS + "Sign-in: after 5 failures per account, a wait even for the right password",
        (SEC + "test_account_is_throttled_after_five_failures_even_for_the_right_password",),
    ),
    Mutation(
        "sign-in-not-throttled",
        "mcp_oauth/provider/sign_in.py",
        "        if not await run_in_threadpool(self.throttle.reserve, keys):",
        "        if False:",
        AS + "Sign-in: after 5 failures per client address, a wait across accounts",
        (SEC + "test_client_address_is_throttled_across_accounts",),
    ),
    Mutation(
        "no-argon2-for-unknown-users",
        "mcp_oauth/provider/passwords.py",
        "        return _hasher.verify(password_hash or _DUMMY_HASH, password)"
        " and password_hash is not None",
        "        return password_hash is not None and _hasher.verify(password_hash, password)",
        AS + "Unknown user and wrong password: same answer, similar time (argon2 runs either way)",
        (SEC + "test_unknown_user_and_wrong_password_look_and_take_the_same",),
    ),
    Mutation(
        "logout-without-csrf",
        "mcp_oauth/provider/sign_in.py",
        "        if not csrf_ok(request, form):\n            return expired_form_page(request)\n",
        "        if False:\n            return expired_form_page(request)\n",
        AS + "CSRF token on the logout form",
        (SEC + "test_logout_without_csrf_keeps_the_session_and_with_it_ends_it",),
    ),
    Mutation(
        "csrf-check-off",
        "mcp_oauth/provider/pages.py",
        "    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())",
        "    return True",
        AS + "CSRF token on the sign-in, consent and device forms",
        (SEC + "test_csrf_token_of_another_session_is_refused_everywhere",),
    ),
    Mutation(
        "csrf-token-kept-at-sign-in",
        "mcp_oauth/provider/sign_in.py",
        '        request.session.update({"sid": session_id, "csrf": secrets.token_urlsafe(32)})',
        '        request.session.update({"sid": session_id, "csrf": form["csrf_token"]})',
        AS + "new CSRF token at sign-in",
        (SEC + "test_sign_in_starts_a_new_csrf_token",),
    ),
    Mutation(
        "pages-may-be-framed",
        "mcp_oauth/provider/http_hardening.py",
        '    (b"x-frame-options", b"DENY"),\n',
        "",
        AS + "HTML pages: CSP frame-ancestors 'none', X-Frame-Options: DENY, …",
        (SEC + "test_every_html_page_forbids_framing_sniffing_referrers_and_caching",),
    ),
    Mutation(
        "session-cookie-samesite-none",
        "oauth_provider.py",
        '                same_site="lax",',
        '                same_site="none",',
        AS + "session cookie HttpOnly, SameSite=Lax",
        (SEC + "test_session_cookie_is_httponly_samesite_and_path_wide",),
    ),
    Mutation(
        "session-cookie-never-secure",
        "oauth_provider.py",
        '                https_only=settings.issuer.startswith("https://"),',
        "                https_only=False,",
        AS + "session cookie Secure when the issuer is https",
        (SEC + "test_session_cookie_is_secure_when_the_issuer_is_https",),
    ),
    Mutation(
        "secrets-stored-in-clear",
        "mcp_oauth/provider/hashed_secrets.py",
        "    return hashlib.sha256(value.encode()).hexdigest()",
        "    return value",
        AS + "Secrets only as SHA-256 hashes in the database",
        (
            SEC + "test_codes_and_tokens_are_stored_only_as_hashes",
            PROM + "test_device_codes_and_client_secrets_are_stored_only_as_hashes",
        ),
    ),
    Mutation(
        "device-code-stored-in-clear",
        "mcp_oauth/provider/storage/devices.py",
        "                    device_code_hash=secret_hash(device_code),",
        "                    device_code_hash=device_code,",
        AS + "Secrets only as SHA-256 hashes in the database (device codes)",
        (PROM + "test_device_codes_and_client_secrets_are_stored_only_as_hashes",),
    ),
    Mutation(
        "short-tokens",
        "mcp_oauth/provider/hashed_secrets.py",
        "    return secrets.token_urlsafe(32)",
        "    return secrets.token_urlsafe(16)",
        AS + "tokens: opaque, ≥ 256 bits of entropy (design.md contract)",
        (PROV + "test_tokens_are_distinct_base64url_strings_of_256_bits",),
    ),
    Mutation(
        "access-token-logged",
        "mcp_oauth/provider/token_minter.py",
        '        issued = [IssuedToken(access, "access", access_expires, scope)]',
        '        issued = [IssuedToken(access, "access", access_expires, scope)]; '
        '__import__("logging").getLogger("oauth_provider").debug("minted %s", access)',
        AS + "no token (nor its hash) in the log, even at debug level",
        (SEC + "test_no_secret_appears_in_the_log",),
    ),
    Mutation(
        "access-token-hash-logged",
        "mcp_oauth/provider/token_minter.py",
        '        issued = [IssuedToken(access, "access", access_expires, scope)]',
        '        issued = [IssuedToken(access, "access", access_expires, scope)]; '
        '__import__("logging").getLogger("oauth_provider").debug("minted %s", '
        '__import__("hashlib").sha256(access.encode()).hexdigest())',
        AS + "no token hash in the log, even at debug level",
        (SEC + "test_no_secret_hash_appears_in_the_log",),
    ),
    Mutation(
        "no-body-limit",
        "mcp_oauth/provider/http_hardening.py",
        "MAX_BODY_BYTES = 64 * 1024",
        "MAX_BODY_BYTES = 64 * 1024 * 1024",
        AS + "Bad input: oversized (> 64 KiB → 413)",
        (SEC + "test_body_over_64_kib_is_413",),
    ),
    Mutation(
        "control-characters-accepted",
        "mcp_oauth/provider/checks.py",
        "        if CONTROL_CHARACTERS.search(key) or CONTROL_CHARACTERS.search(value):",
        "        if False:",
        AS + "Bad input: NUL and control characters get a 4xx, never a 5xx",
        (SEC + "test_nul_bytes_in_parameters_are_refused_not_500",),
    ),
    Mutation(
        "duplicated-parameters-accepted",
        "mcp_oauth/provider/checks.py",
        "        if key in seen and key not in REPEATABLE_PARAMETERS:",
        "        if False:",
        AS + "Bad input: duplicated parameters get their RFC's error",
        (
            PROV + "test_duplicated_parameters_are_refused",
            SEC + "test_malformed_parameters_get_an_error_not_a_crash",
        ),
    ),
    Mutation(
        "session-secret-per-process",
        "oauth_provider.py",
        '    session_secret = store.server_secret("session_secret", new_secret)',
        "    session_secret = new_secret()",
        AS + "A restart or another replica loses nothing: sessions",
        (
            SEC + "test_restart_keeps_clients_codes_device_codes_sessions_and_refresh_tokens",
            REPL + "test_session_cookie_from_one_replica_works_on_the_other",
        ),
    ),
    # -- the resource server -----------------------------------------------------------------
    Mutation(
        "rs-iss-check-off",
        "mcp_oauth/resource_server/verified_token.py",
        '    if claims.get("iss") not in issuers:',
        "    if False:",
        RS + "Only tokens whose `iss` is our provider",
        (PRS + "test_a_token_from_another_issuer_is_refused_by_the_running_server",),
    ),
    Mutation(
        "rs-aud-check-off",
        "mcp_oauth/resource_server/verified_token.py",
        '    if not any(aud.rstrip("/") in wanted for aud in audiences(claims.get("aud"))):',
        "    if False:",
        RS + "Only tokens whose `aud` is this server",
        (
            RSX + "test_token_for_another_audience_is_refused_naming_the_audience",
            "test_interop.py::test_oidc_provider_scope_and_audience_enforced",
        ),
    ),
    Mutation(
        "rs-refresh-token-accepted",
        "mcp_oauth/resource_server/introspection.py",
        '    if token_type is not None and str(token_type).lower() != "bearer":',
        "    if False:",
        RS + "refresh tokens get 401 invalid_token",
        (RSX + "test_refresh_token_is_not_an_access_token",),
    ),
    Mutation(
        "rs-scope-check-off",
        "mcp_oauth/resource_server/gate.py",
        "        if not satisfied(requirement, access.scopes):",
        "        if False:",
        RS + "Each tool checks its scope (403 insufficient_scope names the scope)",
        (RSX + "test_missing_scope_gets_403_insufficient_scope",),
    ),
    Mutation(
        "rs-anonymous-calls-pass",
        "mcp_oauth/resource_server/gate.py",
        "            return self.challenges.unauthorized(requirement)\n",
        "            return None\n",
        RS + "Each tool checks its scope: no token, 401 naming the metadata and scope",
        (RSX + "test_anonymous_protected_call_gets_401_naming_metadata_and_scope",),
    ),
    Mutation(
        "rs-unguarded-tool-starts",
        "mcp_oauth/resource_server/tool_scopes.py",
        "        if undeclared:",
        "        if False:",
        RS + "a tool registered without a scope stops the server from starting",
        (PRS + "test_a_tool_registered_without_a_scope_stops_the_server_from_starting",),
    ),
    Mutation(
        "rs-shared-data-owner",
        "mcp_oauth/resource_server/caller.py",
        "    owner = data_owner(token.subject, username, token.client_id)",
        '    owner = "user:everyone"',
        RS + "each user sees only their own data",
        (RSX + "test_each_user_sees_and_deletes_only_their_own_notes_and_data",),
    ),
    Mutation(
        "rs-provider-down-is-401",
        "mcp_oauth/resource_server/gate.py",
        "            return unavailable(exc)",
        "            return self.challenges.unauthorized(requirement, refused=str(exc))",
        RS + "Provider down: 503 with Retry-After, never an acceptance or a login loop",
        (PRS + "test_a_server_started_before_its_provider_serves_once_the_provider_is_up",),
    ),
    Mutation(
        "rs-cache-keyed-by-token",
        "mcp_oauth/resource_server/introspection.py",
        "        key = hashed_key(token)",
        "        key = token",
        RS + "The token cache is keyed by SHA-256 and holds no token",
        (PRS + "test_the_cache_is_keyed_by_sha256_and_holds_no_token",),
    ),
    Mutation(
        "rs-hashed-key-not-hashed",
        "mcp_oauth/resource_server/caches.py",
        '    return hashlib.sha256("\\0".join(parts).encode()).digest()',
        '    return "\\0".join(parts).encode()',
        RS + "The token cache is keyed by SHA-256 and holds no token",
        (PRS + "test_the_cache_is_keyed_by_sha256_and_holds_no_token",),
    ),
    Mutation(
        "rs-cache-ignores-ttl",
        "mcp_oauth/resource_server/introspection.py",
        "        return min(ttl, exp - now)",
        "        return exp - now",
        RS + "a revoked token stops working within the cache TTL",
        (PRS + "test_with_a_cache_ttl_of_0_a_revoked_token_is_refused_at_its_next_call",),
    ),
    Mutation(
        "rs-refusals-not-cached",
        "mcp_oauth/resource_server/introspection.py",
        "                entry = self._refused[key] = _Entry(None, reason, self.refusal_ttl)",
        "                entry = _Entry(None, reason, self.refusal_ttl)",
        RS + "refusals are cached 5 s (MCP_INTROSPECTION_REFUSAL_TTL)",
        (PRS + "test_a_refused_token_is_not_introspected_again_within_the_refusal_ttl",),
    ),
    Mutation(
        "rs-non-json-crashes",
        "mcp_oauth/resource_server/gate.py",
        "            except (ValueError, RecursionError):",
        "            except RecursionError:",
        RS + "Bad input never gets a 5xx",
        (RSX + "test_malformed_requests_never_get_a_5xx",),
    ),
    Mutation(
        "rs-no-body-limit",
        "mcp_oauth/resource_server/gate.py",
        "            body = await read_body(receive, self.max_body)",
        "            body = await read_body(receive, 1 << 40)",
        RS + "Bad input never gets a 5xx: a body over the limit is 413",
        (PRS + "test_a_body_over_the_limit_is_413_before_any_token_check",),
    ),
]


def repository_files(source: Path) -> list[str]:
    """Tracked files and untracked ones git does not ignore, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (source / name).is_file()]


def copy_repository(source: Path, target: Path) -> None:
    for name in repository_files(source):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, destination)
    if (source / NODE_MODULES).is_dir():
        (target / NODE_MODULES).symlink_to(source / NODE_MODULES, target_is_directory=True)


def apply(mutation: Mutation, root: Path) -> str | None:
    """Apply the mutation in `root`; None, or why it is stale."""
    path = root / mutation.file
    if not path.is_file():
        return f"{mutation.file} does not exist"
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        return f"its original snippet occurs {count} times in {mutation.file} (must be once)"
    path.write_text(text.replace(mutation.original, mutation.replacement))
    return None


def pytest_in(
    root: Path, python: str, nodes: list[str]
) -> tuple[subprocess.CompletedProcess, float]:
    """Run these tests in `root` (stop at the first failure); the result and its seconds."""
    started = time.monotonic()
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    command += [f"tests/{node}" for node in nodes]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    return done, time.monotonic() - started


def run(mutation: Mutation, source: Path, python: str, verbose: bool) -> tuple[str, str]:
    """(outcome, detail) for one mutation: KILLED, SURVIVED, STALE or ERROR."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        root = Path(tmp)
        copy_repository(source, root)
        stale = apply(mutation, root)
        if stale:
            return "STALE", stale
        done, seconds = pytest_in(root, python, list(mutation.tests))
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        if verbose:
            print(f"--- {mutation.name}\n{tail}", flush=True)
        if done.returncode == 1:
            failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
            return "KILLED", f"{seconds:.0f} s; {failed[0] if failed else 'tests failed'}"
        if done.returncode == 0:
            return "SURVIVED", f"{seconds:.0f} s; the paired tests passed"
        return "ERROR", f"pytest exit {done.returncode} ({seconds:.0f} s):\n{tail}"


def check_baseline(source: Path, python: str, mutations: list[Mutation]) -> None:
    """The copy, not an installed checkout, must be what the tests import, and every paired
    test must pass there unmutated."""
    with tempfile.TemporaryDirectory(prefix="mutation-baseline-") as tmp:
        copy_repository(source, Path(tmp))
        found = subprocess.run(
            [python, "-c", "import mcp_oauth; print(mcp_oauth.__file__)"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not Path(found).resolve().is_relative_to(Path(tmp).resolve()):
            sys.exit(f"mutation_check: the copy imports mcp_oauth from {found}, not from itself")
        nodes = list(dict.fromkeys(node for m in mutations for node in m.tests))
        done, seconds = pytest_in(Path(tmp), python, nodes)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            sys.exit(f"mutation_check: the paired tests fail without any mutation:\n{tail}")
        print(f"baseline: {len(nodes)} paired tests pass unmutated ({seconds:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutations at once (default 1)")
    parser.add_argument("--source", type=Path, default=ROOT, help="repository to copy")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter with the test dependencies"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the paired tests unmutated first"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show each pytest tail")
    args = parser.parse_args()

    names = {m.name for m in MUTATIONS}
    assert len(names) == len(MUTATIONS), "mutation names must be unique"
    if args.only:
        unknown = set(args.only) - names
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in selected:
            print(f"{m.name}\n  {m.file}: {m.promise}\n  killed by: {', '.join(m.tests)}")
        return 0

    if not args.no_baseline:
        check_baseline(args.source, args.python, selected)
    outcomes: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            m.name: pool.submit(run, m, args.source, args.python, args.verbose) for m in selected
        }
        for m in selected:
            outcome, detail = futures[m.name].result()
            outcomes.setdefault(outcome, []).append(m.name)
            print(f"{outcome:8} {m.name}: {detail}", flush=True)
    summary = ", ".join(f"{len(v)} {k.lower()}" for k, v in sorted(outcomes.items()))
    print(f"\n{len(selected)} mutations: {summary}")
    for bad in ("SURVIVED", "STALE", "ERROR"):
        if outcomes.get(bad):
            print(f"{bad.lower()}: {', '.join(outcomes[bad])}")
    return 0 if set(outcomes) <= {"KILLED"} else 1


if __name__ == "__main__":
    sys.exit(main())
