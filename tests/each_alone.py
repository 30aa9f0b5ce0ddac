"""`pytest -p tests.each_alone`: every test as if it were the only one run.

After each test, every fixture is torn down, session- and module-scoped ones included, so the
next test sets up all it needs itself, exactly as `pytest path::test` would (only what a test
module keeps in Python globals survives, and no test module here shares state that way). A test
that passes in the suite but fails here depends on what an earlier test left behind. Costly
(servers start once per test rather than once per module): a check, not the everyday run.
"""

from __future__ import annotations

import pytest
from _pytest.runner import runtestprotocol


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    runtestprotocol(item, nextitem=None, log=True)  # no next item: tear every fixture down
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
