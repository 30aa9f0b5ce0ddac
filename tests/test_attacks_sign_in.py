"""Attacks on signing in (issue 11), over real HTTP on SQLite and PostgreSQL: a burst of
concurrent password guesses, and a session cookie kept after its owner signed out.

Each test is written as the attack; SECURITY.md maps the promises to them."""

from __future__ import annotations

import threading
import time

import httpx
from sqlalchemy import update

from mcp_oauth.provider.storage.login_throttle import FREE_LOGIN_FAILURES, backoff_schedule
from mcp_oauth.provider.storage.schema import sessions
from tests import test_security
from tests.conftest import Provider
from tests.oauth_helpers import Browser, auth_params
from tests.test_security import (
    database,
    device_start,
    fake_address,
    login_form,
    try_login,
)

# test_security's fixtures: a provider with a database of its own (these tests throttle real
# accounts), on SQLite and PostgreSQL, its failed sign-ins deleted before each test.
own_provider = test_security.own_provider
throttle_reset = test_security.throttle_reset

BURST = 60


def most_checks_within(seconds: float) -> int:
    """The most sign-in attempts the throttle lets reach the password check within `seconds`
    of one account's first failure: the free ones, then one per backoff wait that fits. The
    throttle counts whole seconds, so each wait can end up to a second early."""
    checks, elapsed = FREE_LOGIN_FAILURES, 0.0
    for _, wait in backoff_schedule(2.0):
        elapsed += wait - 1
        if elapsed >= seconds:
            break
        checks += 1
    return checks


def burst(provider: Provider, guesses: list[tuple[str, str, str]]):
    """Every (username, password, client address) POSTed at once, each from a browser (and
    CSRF token) of its own; returns the answers in order and a monotonic time no later than
    any send."""
    browsers = [Browser(provider.url) for _ in guesses]
    forms = [login_form(browser) for browser in browsers]
    answers: list[httpx.Response | None] = [None] * len(guesses)
    start = threading.Barrier(len(guesses) + 1)

    def guess(n: int) -> None:
        username, password, address = guesses[n]
        forms[n].update(username=username, password=password)
        start.wait()
        answers[n] = browsers[n].http.post(
            "/login", data=forms[n], headers={"x-forwarded-for": address}
        )

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(len(guesses))]
    for thread in threads:
        thread.start()
    began = time.monotonic()  # before the barrier opens: no guess is sent earlier
    start.wait()
    for thread in threads:
        thread.join(120)
    return answers, began


def checked(answers) -> list[httpx.Response]:
    """The answers whose password was checked (401 wrong, 303 signed in); 429 was not."""
    assert {answer.status_code for answer in answers} <= {401, 303, 429}
    return [answer for answer in answers if answer.status_code in (401, 303)]


def test_a_burst_of_guesses_for_one_account_is_throttled_within_the_burst(throttle_reset):
    """Sixty concurrent wrong guesses for bob, each from another address: each attempt is
    reserved before argon2 runs, so at most the free attempts (and one per backoff wait that
    fits in the burst) reach the password check. Which guesses arrive first is the scheduler's
    choice, so the right password comes right after the burst: while the first wait lasts,
    it is refused too."""
    guesses = [("bob", f"guess-{n}", fake_address()) for n in range(BURST)]
    answers, began = burst(throttle_reset, guesses)
    right = try_login(Browser(throttle_reset.url), "bob", "secret456", fake_address())
    seconds = time.monotonic() - began
    assert len(checked(answers)) <= most_checks_within(seconds), (seconds, len(checked(answers)))
    if most_checks_within(seconds) == FREE_LOGIN_FAILURES:
        assert right.status_code == 429, seconds


def test_a_burst_from_one_address_across_accounts_is_throttled_within_the_burst(throttle_reset):
    """The same burst spread over sixty account names from one address (password spraying),
    then alice's right password from that address: the address's own count stops it."""
    address = fake_address()
    guesses = [(f"nobody-{n}", "wrong", address) for n in range(BURST)]
    answers, began = burst(throttle_reset, guesses)
    right = try_login(Browser(throttle_reset.url), "alice", "password123", address)
    seconds = time.monotonic() - began
    assert len(checked(answers)) <= most_checks_within(seconds), (seconds, len(checked(answers)))
    if most_checks_within(seconds) == FREE_LOGIN_FAILURES:
        assert right.status_code == 429, seconds


def test_a_success_gives_back_its_reserved_attempt(throttle_reset):
    """A reservation is no failure: signing in rightly from one address many times never
    throttles that address."""
    address = fake_address()
    for _ in range(FREE_LOGIN_FAILURES + 2):
        assert (
            try_login(Browser(throttle_reset.url), "alice", "password123", address).status_code
            == 303
        )


# -- sessions ---------------------------------------------------------------------------------


def signed_out(browser: Browser) -> bool:
    return 'name="password"' in browser.http.get("/device").text


def copy_of(browser: Browser) -> Browser:
    """Another user agent holding a copy of `browser`'s cookies (a stolen cookie)."""
    thief = Browser(browser.issuer)
    for cookie in browser.http.cookies.jar:
        thief.http.cookies.jar.set_cookie(cookie)
    return thief


def test_a_session_cookie_copied_before_logout_approves_nothing_after_it(throttle_reset):
    alice = Browser(throttle_reset.url, "alice", "password123")
    params, _ = auth_params()
    consent = alice.http.get("/authorize", params=params)
    fields = {**alice.form_fields(consent), "decision": "approve"}
    user_code = device_start(throttle_reset.url)["user_code"]
    thief = copy_of(alice)
    assert not signed_out(thief)  # the copy is a working session before the logout
    logout = alice.http.post("/logout", data={"csrf_token": fields["csrf_token"]})
    assert logout.status_code == 200 and "signed out" in logout.text.lower()
    replayed = thief.http.post("/authorize", data=fields)
    assert "location" not in replayed.headers and 'name="password"' in replayed.text
    assert 'name="password"' in thief.http.get("/authorize", params=params).text
    device = thief.http.post(
        "/device",
        data={"csrf_token": fields["csrf_token"], "user_code": user_code, "decision": "approve"},
    )
    assert "Device connected" not in device.text and 'name="password"' in device.text


def test_a_session_ends_when_its_lifetime_is_over(throttle_reset):
    bob = Browser(throttle_reset.url, "bob", "secret456")
    assert not signed_out(bob)
    with database(throttle_reset) as conn:
        conn.execute(
            update(sessions)
            .where(sessions.c.username == "bob")
            .values(expires_at=int(time.time()) - 1)
        )
    assert signed_out(bob)


def test_signing_in_again_ends_the_previous_session_of_that_browser(throttle_reset):
    """A browser that signs in anew (as someone else) leaves no live session behind that a
    copy of its earlier cookie could use."""
    browser = Browser(throttle_reset.url, "bob", "secret456")
    earlier = copy_of(browser)
    browser.sign_in("alice", "password123")
    assert not signed_out(browser) and signed_out(earlier)
