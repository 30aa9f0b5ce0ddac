"""Reading an OAuth error answer (RFC 6749 §5.2: a JSON object with `error` and an optional
`error_description`) from any HTTP response, whichever HTTP client fetched it."""

from typing import Any, Protocol


class JsonResponse(Protocol):
    def json(self) -> Any: ...


def oauth_error(response: JsonResponse) -> tuple[str, str | None] | None:
    """`(error, error_description)` when the body is an OAuth error object, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    description = body.get("error_description")
    return body["error"], description if isinstance(description, str) else None


def refusal_reason(response: JsonResponse) -> str | None:
    """The most telling part of an OAuth error answer: its description, else its code."""
    error = oauth_error(response)
    return error and (error[1] or error[0])
