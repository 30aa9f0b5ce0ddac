"""The Python ceiling: a bare Starlette endpoint that reads a form and answers JSON, served by
uvicorn exactly as the provider is (one process, no access log).

    python bench/bare_starlette.py --port P
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def echo(request: Request) -> JSONResponse:
    form = await request.form()
    return JSONResponse({"active": True, "token_length": len(str(form.get("token", "")))})


app = Starlette(routes=[Route("/form", echo, methods=["POST"]), Route("/", echo)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
