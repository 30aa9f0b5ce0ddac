"""The scenarios: what is compared (run interleaved, in rounds) and what runs once."""

from __future__ import annotations

import asyncio
import resource
import time
from urllib.parse import urlencode

import httpx

from bench import stack
from bench.measure import (
    ACTIVE,
    ISSUED,
    TOOL_OK,
    Bench,
    Scenario,
    cc_form,
    console,
    cycle,
    form_post,
    tool_call,
)
from bench.servers import DATABASES, Servers
from mcp_oauth.provider.passwords import FLOOR, Argon2Parameters

RS_MODES = [
    ("cached", "cached introspection"),
    ("uncached", "uncached introspection"),
    ("uncached_postgresql", "uncached introspection, PostgreSQL provider"),
    ("jwt", "JWT"),
]


def provider_label(key: str) -> str:
    """A provider key as a reader sees it: postgresql_w2 → PostgreSQL, 2 workers."""
    database, _, workers = key.partition("_w")
    return DATABASES[database] + (f", {workers} workers" if workers else "")


def compared_scenarios(servers: Servers, connections: int, pool: int) -> list[Scenario]:
    """The scenarios whose figures are set against each other (run interleaved); the
    introspection runs cycle through `pool` tokens."""
    peer, bare, durable = servers.peer, servers.bare_starlette, servers.bare_durable_token
    rs_url = servers.urls["cached"]
    rs_auth = (stack.RS_CLIENT_ID, stack.RS_SECRET)
    peer_client = (stack.BENCH_CLIENT_ID, peer.client_secret)
    peer_cc = form_post(peer.token_endpoint, cc_form(peer.resource), peer_client)

    def peer_introspections() -> dict:
        # oidc-provider's in-memory store is an LRU of 1000 entries: the client_credentials
        # runs in between evict earlier tokens, so each run gets new ones.
        auth = (stack.RS_CLIENT_ID, peer.rs_client_secret)
        tokens = stack.peer_client_credentials(peer, pool)
        return {
            "requests": [form_post(peer.introspection_endpoint, {"token": t}, auth) for t in tokens]
        }

    peer_pids = [peer.process.pid]
    introspections, grants = [], []
    for key, provider in servers.providers.items():
        issuer, label = provider.url, provider_label(key)
        tokens = stack.our_client_credentials(issuer, rs_url, pool)
        requests = [form_post(f"{issuer}/introspect", {"token": t}, rs_auth) for t in tokens]
        introspections.append(
            Scenario(f"introspection:{key}", f"provider ({label}): introspection", issuer,
                     [provider.proc.pid], cycle(ACTIVE, requests))
        )  # fmt: skip
        if key in DATABASES:  # client_credentials and refresh: one process per database
            request = form_post(f"{issuer}/token", cc_form(rs_url), rs_auth)
            grants.append(
                Scenario(f"client_credentials:{key}", f"provider ({label}): client_credentials",
                         issuer, [provider.proc.pid], cycle(ISSUED, [request]))
            )  # fmt: skip
            grants.append(refresh_scenario(servers, key, connections))
    scenarios = [
        Scenario("peer_introspection", "oidc-provider: introspection", peer.issuer, peer_pids,
                 cycle(ACTIVE, []), renew=peer_introspections),
        *introspections,
        Scenario("bare_starlette", "bare Starlette: form → JSON", bare.url, [bare.proc.pid],
                 cycle(ACTIVE, [form_post(f"{bare.url}/form", {"token": "x" * 43})])),
        Scenario("peer_client_credentials", "oidc-provider: client_credentials", peer.issuer,
                 peer_pids, cycle(ISSUED, [peer_cc])),
        Scenario("bare_durable_token", "minimal durable token endpoint (SQLite)", durable.url,
                 [durable.proc.pid],
                 cycle(ISSUED, [form_post(f"{durable.url}/token", cc_form(rs_url), rs_auth)])),
        *grants,
    ]  # fmt: skip
    return scenarios + tool_scenarios(servers, connections)


def tool_scenarios(servers: Servers, connections: int) -> list[Scenario]:
    """tools/call in every mode, at `connections` and then on one connection (latency)."""
    bare = servers.bare_mcp
    modes = [("no auth", f"{bare.url}/mcp", [bare.proc.pid], [None])]
    for mode, label in RS_MODES:
        if mode in servers.rs:
            issuer = servers.rs_provider[mode]
            url = servers.urls[mode]
            # One token per connection, so that no two in-flight calls share an introspection.
            tokens = stack.our_client_credentials(issuer.url, url, connections)
            modes.append((label, url, [servers.rs[mode].proc.pid, issuer.proc.pid], tokens))
    scenarios = []
    for single in (False, True):
        for label, url, pids, tokens in modes:
            spec = cycle(TOOL_OK, [tool_call(url, token) for token in tokens])
            if single:
                spec["connections"] = 1
            suffix = ("_1conn", ", 1 connection") if single else ("", "")
            scenarios.append(
                Scenario(f"tools_{label}{suffix[0]}", f"RS tools/call: {label}{suffix[1]}", url,
                         pids, spec)
            )  # fmt: skip
    return scenarios


def refresh_scenario(servers: Servers, key: str, connections: int) -> Scenario:
    """Rotating refresh: every connection follows its own chain (each answer's refresh token
    is the next request's), started each run from one login's worth of new tokens per
    connection (through the login and consent pages)."""
    provider = servers.providers[key]
    request = form_post(
        f"{provider.url}/token",
        {"grant_type": "refresh_token", "client_id": stack.PUBLIC_CLIENT_ID},
    )
    request["body"] += "&refresh_token={token}"

    def seeds() -> dict:
        answers = asyncio.run(stack.user_tokens(provider.url, servers.urls["cached"], connections))
        return {"tokens": [answer["refresh_token"] for answer in answers]}

    spec = {
        "mode": "chain",
        "expect_body": '"refresh_token"',
        "request": request,
        "next_token": '"refresh_token": ?"([^"]+)"',
    }
    label = f"provider ({provider_label(key)}): refresh (rotating)"
    return Scenario(f"refresh:{key}", label, provider.url, [provider.proc.pid], spec, seeds)


def login_scenario(servers: Servers, duration: float, floor: bool = False) -> Scenario:
    """A new browser each time: GET the login page, POST username and password (argon2id,
    at users.yaml's parameters, or at the floor)."""
    _, params = stack.authorize_params(servers.urls["cached"])
    provider = servers.floor_provider if floor else servers.providers["sqlite"]
    spec = {
        "mode": "login",
        "connections": 4,
        "warmup": 0.0,
        "duration": duration,
        "expect_status": [303],
        "path": f"/authorize?{urlencode(params)}",
        "username": stack.USER,
        "password": stack.PASSWORD,
    }
    name, label = ("login_floor", ", argon2id at the floor") if floor else ("login", "")
    label = f"provider: password logins (login form){label}"
    return Scenario(name, label, provider.url, [provider.proc.pid], spec)


def rs_metrics(mcp_url: str) -> dict:
    return httpx.get(mcp_url.removesuffix("/mcp") + "/metrics", timeout=10).json()["token_verifier"]


def concurrent_first_calls(bench: Bench, servers: Servers) -> None:
    """50 connections send their first call with one new token at once: how many
    introspections reach the provider (the cache should coalesce them into one)."""
    url, provider = servers.urls["cached"], servers.providers["sqlite"]
    token = asyncio.run(stack.user_tokens(provider.url, url, 1))[0]["access_token"]
    before = rs_metrics(url)["introspections"]
    spec = {
        "mode": "cycle",
        "connections": 50,
        "warmup": 0.0,
        "duration": 30.0,
        "max_requests": 50,
        "expect_body": TOOL_OK,
        "requests": [tool_call(url, token)],
    }
    pids = [servers.rs["cached"].proc.pid, provider.proc.pid]
    result = bench.once(
        Scenario("first_calls_50", "RS: 50 concurrent first calls, new token", url, pids, spec)
    )
    result["introspections"] = rs_metrics(url)["introspections"] - before


def revocation_delay(bench: Bench, servers: Servers, ttl: float) -> None:
    """Call once with a new token (now cached), revoke it at the provider, then call every
    50 ms until the resource server refuses it: with the provider's revocation events, well
    under a second (bench/revocation_latency.py measures it over many revocations); without
    them (MCP_REVOCATION_EVENTS=off, or another provider) about the cache TTL."""
    url, issuer = servers.urls["cached"], servers.providers["sqlite"].url
    token = asyncio.run(stack.user_tokens(issuer, url, 1))[0]["access_token"]
    request = tool_call(url, token)
    poll_every, refused_after = 0.05, None
    with httpx.Client(timeout=10) as http:

        def status() -> int:
            return http.post(url, content=request["body"], headers=request["headers"]).status_code

        first = status()
        http.post(f"{issuer}/revoke", data={"token": token, "client_id": stack.PUBLIC_CLIENT_ID})
        revoked = time.monotonic()
        for _ in range(int((ttl + 10) / poll_every)):
            if status() == 401:
                refused_after = round(time.monotonic() - revoked, 2)
                break
            time.sleep(poll_every)
    bench.results["revocation"] = {
        "label": "RS: refusal after revocation",
        "cache_ttl": ttl,
        "first_status": first,
        "refused_after_s": refused_after,  # None: still accepted ttl + 10 s after revocation
    }
    console.print(f"  {'RS: refused after revocation':<52} {refused_after} s (cache TTL {ttl} s)")


def argon2_cost(bench: Bench, samples: int) -> None:
    """What one sign-in's password check costs, at the default parameters and at the floor:
    wall time and CPU (all threads: p lanes run in parallel) of argon2id verifications in
    this process, with no load running."""
    costs = {}
    for name, parameters in [("defaults", Argon2Parameters()), ("floor", FLOOR)]:
        hasher = parameters.hasher()
        password_hash = hasher.hash(stack.PASSWORD)
        walls, cpus = [], []
        for _ in range(samples):
            cpu_before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            hasher.verify(password_hash, stack.PASSWORD)
            walls.append(time.perf_counter() - started)
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            cpus.append(
                cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
            )
        costs[name] = {
            "parameters": parameters.describe(),
            "wall_ms": round(1000 * sorted(walls)[len(walls) // 2], 1),
            "cpu_ms": round(1000 * sorted(cpus)[len(cpus) // 2], 1),
        }
        console.print(
            f"  argon2id verify at the {name} ({parameters.describe()}): "
            f"{costs[name]['wall_ms']} ms, {costs[name]['cpu_ms']} ms CPU"
        )
    bench.results["argon2"] = {"label": "argon2id verification (one sign-in)", **costs}
