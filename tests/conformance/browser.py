#!/usr/bin/env python3
"""A stand-in for the user's browser in the conformance runs: `$BROWSER` for client.py.

The suite's authorization server approves every request at once with a redirect, so a
browser would only follow redirects to client.py's loopback callback; this does exactly
that, once, with the standard library (it runs under whatever python3 is on PATH).
"""

import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=30) as answer:
    answer.read()
