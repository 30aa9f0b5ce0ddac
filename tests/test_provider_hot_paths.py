"""The provider's hot paths (issue 14): introspection and revocation answered by
token_lookup_endpoints.py, SQLite group commit (storage/group_commit.py) and the client cache
(storage/clients.py). Real servers over HTTP, real SQLite and PostgreSQL; nothing timed."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, delete, insert, literal_column, select, table, update
from sqlalchemy.exc import IntegrityError

from mcp_oauth.provider.hashed_secrets import new_secret, secret_hash
from mcp_oauth.provider.records import IssuedToken, TokenFamily, new_family_id
from mcp_oauth.provider.storage import prebuilt
from mcp_oauth.provider.storage.clients import ClientStore
from mcp_oauth.provider.storage.database import Database
from mcp_oauth.provider.storage.janitor import Janitor, Retention
from mcp_oauth.provider.storage.loop_reader import LOOP_BUSY_TIMEOUT_MS, DatabaseBusy, LoopReader
from mcp_oauth.provider.storage.schema import clients, server_secrets, token_families, tokens
from mcp_oauth.provider.storage.store import Store
from mcp_oauth.provider.storage.tokens import family_inserts
from tests.conftest import RS_AUTH
from tests.oauth_helpers import CLIENT_ID, code_for, redeem

# -- the handlers' RFC answers, on SQLite and PostgreSQL ------------------------------------


def _user_tokens(provider, alice) -> dict:
    code, verifier, params = code_for(alice)
    extra = {"resource": params["resource"]} if "resource" in params else {}
    response = redeem(provider.url, code, verifier, **extra)
    assert response.status_code == 200, response.text
    return response.json()


def test_introspection_without_a_token_is_invalid_request(provider):
    response = httpx.post(f"{provider.url}/introspect", data={"tok": "x"}, auth=RS_AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"


def test_introspection_with_a_wrong_secret_is_401_with_a_basic_challenge(provider, alice):
    token = _user_tokens(provider, alice)["access_token"]
    response = httpx.post(
        f"{provider.url}/introspect", data={"token": token}, auth=(RS_AUTH[0], "wrong")
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_introspection_answer_is_no_store_and_describes_the_token(provider, alice):
    token = _user_tokens(provider, alice)["access_token"]
    response = httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert answer["active"] is True and answer["client_id"] == CLIENT_ID
    assert answer["token_type"] == "Bearer" and answer["iss"] == provider.url


def test_a_metadata_document_client_id_at_introspection_is_invalid_client(provider):
    """Such a client id leaves the event loop (its document would be fetched); this one is
    refused before any fetch (plain http), as a 4xx."""
    response = httpx.post(
        f"{provider.url}/introspect",
        data={"token": "x"},
        auth=("http://127.0.0.1:1/client.json", "secret"),
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"


def test_a_client_cannot_revoke_another_clients_token(provider, alice):
    """RFC 7009 §2.1: the token was not issued to the client asking: refused, still active."""
    token = _user_tokens(provider, alice)["access_token"]
    response = httpx.post(f"{provider.url}/revoke", data={"token": token}, auth=RS_AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    answer = httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH)
    assert answer.json()["active"] is True


def test_revoking_an_access_token_makes_it_inactive(provider, alice):
    token = _user_tokens(provider, alice)["access_token"]
    response = httpx.post(f"{provider.url}/revoke", data={"token": token, "client_id": CLIENT_ID})
    assert response.status_code == 200 and response.json() == {}
    assert response.headers["cache-control"] == "no-store"
    answer = httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH)
    assert answer.json() == {"active": False}


def test_a_revocation_cut_off_before_its_body_ends_revokes_nothing(provider, alice):
    """A form body is read to its end before anything is done with it: a client that goes
    away mid-body (here after a complete token and client_id, with more declared) leaves the
    token active, it does not have a part of its request carried out."""
    token = _user_tokens(provider, alice)["access_token"]
    body = f"client_id={CLIENT_ID}&token={token}".encode()
    host, port = provider.url.removeprefix("http://").split(":")
    head = (
        f"POST /revoke HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body) + 64}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(head.encode() + body)
        time.sleep(0.5)  # the server hands the part it has to the endpoint, which waits for more
    time.sleep(0.5)  # and then learns the client is gone
    answer = httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH)
    assert answer.json()["active"] is True


def test_revocation_without_a_token_is_invalid_request(provider):
    response = httpx.post(f"{provider.url}/revoke", data={"client_id": CLIENT_ID})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# -- group commit (SQLite) --------------------------------------------------------------------


def test_a_database_locked_past_the_loops_short_wait_is_database_busy(tmp_path):
    """SQLite can answer BUSY to a reader (rollback journal, WAL recovery, another process's
    exclusive lock): the event loop's reader gives up after its short busy timeout with
    DatabaseBusy (answered 503 temporarily_unavailable by token_lookup_endpoints.py) instead
    of sleeping in SQLite's busy handler for the pool's 10 s; once the lock is gone it reads."""
    path = f"{tmp_path}/journal.db"
    with sqlite3.connect(path) as setup:  # a rollback-journal file: a writer locks out readers
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.execute("INSERT INTO t VALUES (1)")
    statement = select(literal_column("x")).select_from(table("t"))
    # The driver's own wait is an hour: only the reader's short busy timeout can end it.
    reader = LoopReader(create_engine(f"sqlite:///{path}", connect_args={"timeout": 3600}))
    outcome: list = []

    def read() -> None:
        try:
            outcome.append(reader.first(statement, {}))
        except Exception as exc:
            outcome.append(exc)

    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        thread.join(30 + LOOP_BUSY_TIMEOUT_MS / 1000)  # far past the short timeout
        assert not thread.is_alive(), "the read waited in SQLite's busy handler"
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert len(outcome) == 1 and isinstance(outcome[0], DatabaseBusy)
    assert reader.first(statement, {}) == {"x": 1}


def _wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


def _queued_together(
    db: Database, jobs: list, then=lambda index, result: result, grouped=None
) -> list:
    """Run `jobs` from threads so that they all wait in one batch: the test holds the
    leader's lock until every job is queued. Returns, for each job, `then(index, result)`
    as its caller computed it right after `db.grouped` (or `grouped`) returned, or what the
    call raised. A caller still waiting after 30 s is reported as "hung"."""
    committer = db._group
    outcomes: list = ["hung"] * len(jobs)
    grouped = grouped or db.grouped

    def call(index: int) -> None:
        try:
            outcomes[index] = then(index, grouped(jobs[index]))
        except BaseException as exc:  # what the caller of that job sees
            outcomes[index] = exc

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(jobs))]
    with committer._leader:
        for thread in threads:
            thread.start()
        _wait_until(lambda: len(committer._queue) == len(jobs))
    for thread in threads:
        thread.join(30)
    return outcomes


def _family_with_refresh_token(store: Store) -> tuple[TokenFamily, str]:
    family = TokenFamily(client_id=CLIENT_ID, username="alice", scope="read", resource=None)
    value = new_secret()
    expires = int(time.time()) + 600
    store.tokens.save_family(family, [IssuedToken(value, "refresh", expires, "read")])
    return family, value


def test_a_failing_job_takes_nothing_else_from_its_batch(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/group.db")
    families = [TokenFamily(CLIENT_ID, "alice", "read", None) for _ in range(5)]
    issued = [IssuedToken(new_secret(), "access", int(time.time()) + 60, "read") for _ in families]

    def saving(index: int):
        from mcp_oauth.provider.storage.tokens import insert_family

        return lambda conn: insert_family(conn, families[index], [issued[index]])

    def failing(conn):
        conn.execute(update(tokens).values(scope="tampered"))  # rolled back with the batch
        raise RuntimeError("this job fails")

    outcomes = _queued_together(store.db, [saving(0), saving(1), failing, saving(2), saving(3)])
    assert isinstance(outcomes[2], RuntimeError)
    assert [outcomes[i] for i in (0, 1, 3, 4)] == [None] * 4
    stored = sqlite3.connect(f"{tmp_path}/group.db").execute("SELECT token_hash, scope FROM tokens")
    rows = dict(stored.fetchall())
    assert set(rows) == {secret_hash(issued[i].value) for i in (0, 1, 2, 3)}
    assert set(rows.values()) == {"read"}


def _new_token() -> list[IssuedToken]:
    return [IssuedToken(new_secret(), "access", int(time.time()) + 60, "read")]


def test_a_batch_of_inserts_is_one_statement_a_table_and_a_bad_one_takes_nothing_else(
    tmp_path, monkeypatch
):
    """SQLite: writes that only insert rows (prebuilt.Inserts: a client_credentials family and
    its token) queued together run as one executemany per statement. When that fails (one
    write's token is stored already), each write runs alone: the others are stored, the bad
    one alone fails and leaves nothing of itself. (PostgreSQL's batches:
    test_provider_loop_inserts.py.)"""
    store = Store(f"sqlite:///{tmp_path}/inserts.db")
    statements: list[int] = []
    execute = prebuilt.execute

    def counted(conn, statement, params):
        statements.append(len(params) if isinstance(params, list) else 1)
        return execute(conn, statement, params)

    monkeypatch.setattr(prebuilt, "execute", counted)
    issued = [_new_token() for _ in range(4)]
    families = [TokenFamily(CLIENT_ID, None, "read", None) for _ in issued]
    writes = [
        family_inserts(family, tokens) for family, tokens in zip(families, issued, strict=True)
    ]
    outcomes = _queued_together(store.db, writes, grouped=store.db.grouped_inserts)
    assert outcomes == [None] * 4
    assert statements == [4, 4]  # the families' rows, then the tokens'
    assert all(store.tokens.find(tokens[0].value) for tokens in issued)

    clash_family = TokenFamily(CLIENT_ID, None, "read", None)
    fresh = [_new_token(), _new_token()]
    writes = [
        family_inserts(TokenFamily(CLIENT_ID, None, "read", None), fresh[0]),
        family_inserts(clash_family, issued[0]),  # a token stored above
        family_inserts(TokenFamily(CLIENT_ID, None, "read", None), fresh[1]),
    ]
    outcomes = _queued_together(store.db, writes, grouped=store.db.grouped_inserts)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], IntegrityError), outcomes[1]
    assert all(store.tokens.find(tokens[0].value) for tokens in fresh)
    with store.db.engine.connect() as conn:
        rows = conn.execute(
            select(token_families).where(token_families.c.grant_id == clash_family.family_id)
        )
        assert rows.first() is None  # the failed write's family went with it
    store.db.engine.dispose()


def test_one_batch_spends_a_refresh_token_once(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/spend.db")
    family, value = _family_with_refresh_token(store)
    old = store.tokens.find(value)
    successors = [IssuedToken(new_secret(), "refresh", old.expires_at, "read") for _ in range(4)]

    # rotate_refresh_token itself goes through db.grouped: call it from the threads directly.
    committer = store.db._group
    outcomes: list = [None] * 4

    def call(index: int) -> None:
        outcomes[index] = store.tokens.rotate_refresh_token(old, family, [successors[index]])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    with committer._leader:
        for thread in threads:
            thread.start()
        _wait_until(lambda: len(committer._queue) == 4)
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == [False, False, False, True]
    stored = [store.tokens.find(token.value) for token in successors]
    assert sum(token is not None for token in stored) == 1


def test_every_sqlite_commit_reaches_the_disk_before_it_is_answered(tmp_path):
    """synchronous=FULL on every connection the provider stores through (pooled, and the
    event loop's own): each COMMIT fsyncs the WAL, so an answered token, rotation or
    revocation survives power loss too (NORMAL keeps it only across a process crash)."""
    store = Store(f"sqlite:///{tmp_path}/fsync.db")
    full = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
    with store.db.write() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == full
    with store.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    statement = select(literal_column("synchronous")).select_from(table("pragma_synchronous"))
    assert store.db.read_first(statement, {}) == {"synchronous": full}  # the loop's connection


def test_a_grouped_write_is_committed_when_it_returns(tmp_path):
    """Durability is not traded: each waiting caller of a batch, right after db.grouped
    returns, reads its row through a fresh connection (as another process would). The last
    job holds the batch open for a while, so a caller answered before COMMIT would read
    nothing."""
    store = Store(f"sqlite:///{tmp_path}/durable.db")
    families = [TokenFamily(CLIENT_ID, "alice", "read", None) for _ in range(4)]
    issued = [IssuedToken(new_secret(), "access", int(time.time()) + 60, "read") for _ in families]
    returned, ran = threading.Event(), []

    def saving(index: int):
        from mcp_oauth.provider.storage.tokens import insert_family

        def job(conn):
            insert_family(conn, families[index], [issued[index]])
            ran.append(index)  # the batch runs its jobs one after the other, in one thread
            if len(ran) == len(families):  # the batch's last job, whichever caller's
                returned.wait(2.0)  # set only once a caller returned (and read) before COMMIT

        return job

    def read_back(index: int, _result) -> tuple | None:
        with sqlite3.connect(f"{tmp_path}/durable.db") as other:
            row = other.execute(
                "SELECT grant_id FROM tokens WHERE token_hash = ?",
                (secret_hash(issued[index].value),),
            ).fetchone()
        returned.set()  # after the read: a read before COMMIT is not raced by the COMMIT
        return row

    outcomes = _queued_together(store.db, [saving(i) for i in range(4)], then=read_back)
    assert outcomes == [(family.family_id,) for family in families]


def test_an_exception_that_is_no_error_finishes_every_job_of_its_batch(tmp_path):
    """A job raising SystemExit (a BaseException) leaves no caller of its batch waiting for
    ever (each would otherwise loop on empty transactions holding the writer lock)."""
    store = Store(f"sqlite:///{tmp_path}/exit.db")

    def exiting(conn):
        raise SystemExit("shutting down")

    outcomes = _queued_together(store.db, [lambda conn: "ok", exiting, lambda conn: "ok"])
    assert "hung" not in outcomes
    assert all(isinstance(outcome, SystemExit) for outcome in outcomes)
    assert store.db.grouped(lambda conn: "after") == "after"  # the committer still works


def test_family_ids_are_uuid7_in_the_order_they_were_made():
    """A new family's id is a UUIDv7 (RFC 9562): its indexes grow at their end instead of at a
    random page per family; still unique, and never reused."""
    made = [new_family_id() for _ in range(1000)]
    time.sleep(0.002)  # a later millisecond
    later = new_family_id()
    ids = [uuid.UUID(value) for value in [*made, later]]
    assert {(found.version, found.variant) for found in ids} == {(7, uuid.RFC_4122)}
    assert len(set(made)) == len(made)
    assert max(made) < later
    family = uuid.UUID(TokenFamily("c", None, "read", None).family_id)  # what a grant makes
    assert family.version == 7 and str(family) > later


def test_a_failing_after_commit_callback_does_not_fail_a_committed_write(tmp_path):
    """A callback that raises after COMMIT is logged; the caller gets its result, because
    its write is committed (reporting it failed would lose, e.g., a rotation's answer)."""
    store = Store(f"sqlite:///{tmp_path}/after.db")

    def job(conn):
        conn.execute(insert(server_secrets).values(name="probe", value="kept"))
        Database.after_commit(conn, lambda: 1 / 0)
        return "committed"

    assert store.db.grouped(job) == "committed"
    with sqlite3.connect(f"{tmp_path}/after.db") as other:
        row = other.execute("SELECT value FROM server_secrets WHERE name = 'probe'").fetchone()
    assert row == ("kept",)


# -- the client cache: a bounded, documented delay for other replicas' changes ---------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_database")
    return f"sqlite:///{tmp_path}/clients.db"


def _client_id() -> str:
    return f"client-{new_secret()[:12]}"


def test_a_secret_changed_by_another_replica_is_honoured_within_the_cache_time(database_url):
    bound = 1.0
    here, there = (ClientStore(Database(database_url), cache_seconds=bound) for _ in range(2))
    client_id, old, new = _client_id(), new_secret(), new_secret()
    here.save(client_id, old, {"token_endpoint_auth_method": "client_secret_basic"})
    assert here.get(client_id).check_client_secret(old)  # now cached here
    there.save(client_id, new, {"token_endpoint_auth_method": "client_secret_basic"})
    _wait_until(lambda: here.get(client_id).check_client_secret(new), seconds=bound + 30)
    assert not here.get(client_id).check_client_secret(old)


def test_a_client_deleted_elsewhere_is_gone_within_the_cache_time(database_url):
    bound = 1.0
    db = Database(database_url)
    here = ClientStore(db, cache_seconds=bound)
    client_id, secret = _client_id(), new_secret()
    here.save(client_id, secret, {"token_endpoint_auth_method": "client_secret_basic"})
    assert here.get(client_id) is not None
    with db.write() as conn:  # as the janitor (or another replica's janitor) deletes one
        conn.execute(delete(clients).where(clients.c.client_id == client_id))
    _wait_until(lambda: here.get(client_id) is None, seconds=bound + 30)


def test_a_client_the_janitor_deletes_here_is_forgotten_at_once(database_url):
    """The janitor's deletion of an unused self-registered client reaches this process's
    client cache at once, not after the cache time."""
    db = Database(database_url)
    here = ClientStore(db, cache_seconds=3600)
    client_id, secret = _client_id(), new_secret()
    here.save(client_id, secret, {"token_endpoint_auth_method": "client_secret_basic"})
    assert here.get(client_id) is not None  # now cached here
    janitor = Janitor(db, Retention(unused_client=60), here)
    assert janitor.sweep(at=int(time.time()) + 3600).get("clients", 0) >= 1
    assert here.get(client_id) is None


def test_a_change_made_here_is_honoured_at_once(database_url):
    here = ClientStore(Database(database_url), cache_seconds=3600)
    client_id, old, new = _client_id(), new_secret(), new_secret()
    here.save(client_id, old, {"token_endpoint_auth_method": "client_secret_basic"})
    assert here.get(client_id).check_client_secret(old)
    here.save(client_id, new, {"token_endpoint_auth_method": "client_secret_basic"})
    assert here.get(client_id).check_client_secret(new)
    assert not here.get(client_id).check_client_secret(old)
