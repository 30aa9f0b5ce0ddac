"""Interop: Apache httpd with mod_auth_openidc (Debian's libapache2-mod-auth-openidc, a certified
OpenID Connect relying party) protects a page with our provider, and real Chromium reaches it
only after signing in and consenting there; mod_auth_openidc's logout goes through our
end_session_endpoint and ends the provider's session, so the next visit asks to sign in again.

The test starts its own apache2 on a free loopback port with the configuration in
tests/peers/apache/ (its own server root, pid file and logs in a temporary folder); the
system-wide service plays no part. scripts/install.sh --test installs the packages.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from string import Template
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import start_provider
from tests.peers.process import stop_peer
from tests.support import CHROMIUM, free_port, headless_chromium

APACHE_DIR = Path(__file__).resolve().parent / "peers" / "apache"
MODULES = Path("/usr/lib/apache2/modules")
APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
START_SECONDS = 30  # how long apache2 may take to answer
STEP_MS = 20_000  # how long one page of the sign-in may take in Chromium


def missing_software() -> str | None:
    """Why this test cannot run here, precisely, or None."""
    if not Path(APACHE).exists():
        return "apache2 is not installed (scripts/install.sh --test, Debian package apache2)"
    if not (MODULES / "mod_auth_openidc.so").exists():
        return (
            "mod_auth_openidc is not installed (scripts/install.sh --test, Debian package "
            "libapache2-mod-auth-openidc)"
        )
    if not CHROMIUM.exists():
        return "Chromium is not installed (scripts/install.sh --test, Debian package chromium)"
    return None


@pytest.fixture(scope="module")
def software() -> None:
    reason = missing_software()
    if reason and os.geteuid() != 0:
        pytest.skip(f"{reason}; not root, so it cannot be installed here")
    assert reason is None, reason


@pytest.fixture(scope="module")
def oidc_provider(software, tmp_path_factory):
    handle = start_provider(tmp_path_factory.mktemp("apache-provider"))
    yield handle
    handle.process.stop()


def register_apache(provider_url: str, port: int) -> dict:
    """mod_auth_openidc as a confidential web client (RFC 7591), with its redirect URI and
    the page it asks to come back to after signing out."""
    response = httpx.post(
        f"{provider_url}/register",
        json={
            "client_name": "Apache mod_auth_openidc",
            "redirect_uris": [f"http://127.0.0.1:{port}/protected/redirect_uri"],
            "post_logout_redirect_uris": [f"http://127.0.0.1:{port}/signed-out.html"],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code"],
            "scope": "openid profile email",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def apache(oidc_provider):
    """apache2 in the foreground on a free port, configured from tests/peers/apache/."""
    port = free_port()
    client = register_apache(oidc_provider.url, port)
    root = Path(tempfile.mkdtemp(prefix="oidc-apache-"))
    try:
        process = start_apache(root, port, oidc_provider.url, client)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_answering(url, process, root)
            yield url
        finally:
            stop_peer(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def start_apache(root: Path, port: int, issuer: str, client: dict) -> subprocess.Popen:
    # World-readable: apache2 started by root serves as www-data.
    root.chmod(0o755)
    shutil.copytree(APACHE_DIR / "docroot", root / "docroot")
    for path in (root / "docroot").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    user_group = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    config = Template((APACHE_DIR / "httpd.conf.template").read_text()).substitute(
        server_root=root,
        document_root=root / "docroot",
        port=port,
        modules=MODULES,
        user_group=user_group,
        issuer=issuer,
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        passphrase=secrets.token_urlsafe(32),
    )
    (root / "httpd.conf").write_text(config)
    return subprocess.Popen(
        [APACHE, "-d", str(root), "-f", str(root / "httpd.conf"), "-DFOREGROUND"],
        stdout=subprocess.DEVNULL,
        stderr=(root / "stderr.log").open("wb"),
    )


def wait_until_answering(url: str, process: subprocess.Popen, root: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            httpx.get(f"{url}/signed-out.html", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    logs = "".join(
        (root / name).read_text(errors="replace")
        for name in ("stderr.log", "error.log")
        if (root / name).exists()
    )
    raise RuntimeError(f"apache2 did not answer at {url}:\n{logs}")


def sign_in_and_consent(page, provider_url: str) -> None:
    page.wait_for_url(re.compile(re.escape(provider_url) + r"/authorize\?"), timeout=STEP_MS)
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "password123")
    page.click("button[type=submit]")
    page.click("button[name=decision][value=approve]")


def test_chromium_reaches_the_apache_page_only_after_signing_in_and_signing_out_ends_it(
    oidc_provider, apache
):
    protected = f"{apache}/protected/index.shtml"
    with headless_chromium() as browser:
        page = browser.new_page()
        page.goto(protected)
        assert page.url.startswith(f"{oidc_provider.url}/authorize?")  # sent to sign in
        assert page.locator("input[name=password]").count() == 1
        sign_in_and_consent(page, oidc_provider.url)
        page.wait_for_url(protected, timeout=STEP_MS)
        assert page.locator("#user").inner_text() == "alice"
        assert page.locator("#name").inner_text() == "Alice"

        # mod_auth_openidc's logout: its session, then our end_session_endpoint with the
        # ID token as hint, then back to the registered post-logout page.
        signed_out = f"{apache}/signed-out.html"
        page.goto(f"{apache}/protected/redirect_uri?logout={quote(signed_out, safe='')}")
        page.wait_for_url(signed_out, timeout=STEP_MS)
        assert "You signed out" in page.content()

        page.goto(protected)  # the provider asks to sign in again
        page.wait_for_url(
            re.compile(re.escape(oidc_provider.url) + r"/authorize\?"), timeout=STEP_MS
        )
        assert page.locator("input[name=password]").count() == 1
