"""Tools as a person meets them at the prompt: what each needs, its arguments, its result.

Arguments come as `key=value` words or one JSON object, or are asked for one by one from the
tool's input schema; each value is converted to the type the schema declares.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import mcp_types

from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.sdk_internals import CallToolResult
from mcp_oauth.client.session import McpSession

# mcp_resource_server.py publishes what each tool needs in this public tool's answer.
REQUIREMENTS_TOOL = "public_info"
UNKNOWN = "—"


async def tool_requirements(session: McpSession, tools: list[mcp_types.Tool]) -> dict[str, str]:
    """What each tool needs ("scope write", "any valid token", "no token"), as the server says."""
    if REQUIREMENTS_TOOL not in {tool.name for tool in tools}:
        return {}
    result = await session.call_tool(REQUIREMENTS_TOOL, {})
    table = result.structured_content or {}
    needs = table.get("tools") if isinstance(table, dict) else None
    return {str(name): str(need) for name, need in needs.items()} if isinstance(needs, dict) else {}


def scope_needed(requirement: str | None) -> str | None:
    """The OAuth scope in a requirement such as "scope write"; None when no scope is needed."""
    if requirement and requirement.startswith("scope "):
        return requirement.removeprefix("scope ")
    return None


def parse_arguments(words: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """`key=value …` or a single JSON object, typed by the tool's input schema."""
    if len(words) == 1 and words[0].lstrip()[:1] in ("{", "["):
        try:
            arguments = json.loads(words[0])
        except ValueError as exc:
            raise ClientError(
                f"the arguments are not valid JSON ({exc})", 'write e.g. {"key": "x"}'
            ) from exc
        if not isinstance(arguments, dict):
            raise ClientError("the JSON arguments must be an object", 'write e.g. {"key": "x"}')
        return arguments
    properties = schema.get("properties", {})
    arguments = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ClientError(
                f"argument {word!r} is not key=value", "write e.g. key=notes value=hello"
            )
        if key not in properties:
            known = ", ".join(properties) or "none"
            raise ClientError(f"the tool has no argument {key!r}", f"its arguments are: {known}")
        arguments[key] = convert(value, properties[key], key)
    return arguments


def ask_arguments(schema: dict[str, Any], ask: Callable[[str, str, bool], str]) -> dict[str, Any]:
    """Ask for each argument: `ask(name, hint, required)` returns the typed-in text ("" to skip)."""
    required = set(schema.get("required", []))
    arguments = {}
    for name, prop in schema.get("properties", {}).items():
        text = ask(name, describe(prop), name in required)
        if text or name in required:
            arguments[name] = convert(text, prop, name)
    return arguments


def describe(prop: dict[str, Any]) -> str:
    kinds = " or ".join(kind for kind in _types(prop) if kind != "null") or "any"
    if "enum" in prop:
        kinds = " | ".join(map(str, prop["enum"]))
    hint = prop.get("description", "")
    return f"{kinds}{', ' + hint if hint else ''}"


def convert(text: str, prop: dict[str, Any], name: str) -> Any:
    """The typed-in text as the JSON type the schema wants (strings stay as typed)."""
    kinds = _types(prop)
    if kinds and set(kinds) <= {"string", "null"}:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        if "string" in kinds or not kinds:
            return text
        raise ClientError(
            f"{name} must be {' or '.join(kinds)}, not {text!r}", "give a JSON value"
        ) from None
    return value


def _types(prop: dict[str, Any]) -> list[str]:
    """Declared JSON types, looking through `anyOf` (how Optional[...] is written)."""
    if "type" in prop:
        return prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    if "enum" in prop:
        return ["string"] if all(isinstance(v, str) for v in prop["enum"]) else []
    return [kind for option in prop.get("anyOf", []) for kind in _types(option)]


def result_text(result: CallToolResult) -> str:
    """The tool's answer: its structured content as JSON if any, else its text blocks."""
    if result.structured_content is not None and not result.is_error:
        return json.dumps(result.structured_content, indent=2, ensure_ascii=False)
    return "\n".join(
        block.text if isinstance(block, mcp_types.TextContent) else f"[{block.type} content]"
        for block in result.content
    )
