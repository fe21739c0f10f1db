"""``@operation``: the one way an API route is declared.

It states, in one place per route: the method and path, the scope the caller needs (``read``,
``write`` or ``public``; the auth layer in ``services.auth.guard`` enforces it), the pydantic
models of the query string, the body and the response, and a summary. The decorator validates
the request against the models (errors become 422 JSON), and the OpenAPI document is generated
from the same declarations (``services.api.openapi``), so the docs cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Literal

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel

from services.api.errors import ApiError
from services.auth.guard import public, requires

Scope = Literal["read", "write", "public"]
# No request of this API needs more than 2 levels; 32 leaves room and refuses parser bombs.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Operation:
    method: str
    scope: Scope
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    upload_field: str | None = None  # the multipart file field, when the body may carry one
    response: type[BaseModel] | None = None
    status: int = 200
    media_type: str = "application/json"
    errors: tuple[int, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def operation(
    blueprint: Blueprint,
    rule: str,
    *,
    method: str = "GET",
    scope: Scope,
    summary: str,
    tag: str,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    upload_field: str | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    media_type: str = "application/json",
    errors: tuple[int, ...] = (),
    description: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    spec = Operation(
        method=method.upper(),
        scope=scope,
        summary=summary,
        tag=tag,
        query=query,
        body=body,
        upload_field=upload_field,
        response=response,
        status=status,
        media_type=media_type,
        errors=errors,
        description=description,
    )

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def endpoint(**path_args: Any) -> Any:
            arguments = dict(path_args)
            if spec.query is not None:
                arguments["query"] = spec.query.model_validate(_query_values(spec.query))
            if spec.body is not None and spec.upload_field is None:
                optional = not any(f.is_required() for f in spec.body.model_fields.values())
                arguments["body"] = spec.body.model_validate(json_body(allow_empty=optional))
            result = view(**arguments)
            if isinstance(result, BaseModel):
                response_body = jsonify(result.model_dump(mode="json"))
                response_body.status_code = spec.status
                return response_body
            return result

        endpoint.operation = spec  # type: ignore[attr-defined]
        marked = public(endpoint) if scope == "public" else requires(scope)(endpoint)
        blueprint.add_url_rule(rule, view.__name__, marked, methods=[spec.method])
        return marked

    return decorate


def require_scope(scope: Literal["read", "write"], reason: str) -> None:
    """A check inside a view, for what needs more than the route's declared scope (a search
    with add=true writes). Does nothing until the auth layer sets ``g.api_key``."""
    if "api_key" not in g:
        return
    key = g.api_key
    if key is None or not key.allows(scope):
        raise ApiError(403, f"{reason}: an API key with the '{scope}' scope is required")


def may_write() -> bool:
    """Whether the presented key has the write scope (True until the auth layer is installed,
    as require_scope lets everything through then)."""
    if "api_key" not in g:
        return True
    return g.api_key is not None and g.api_key.allows("write")


def json_body(*, allow_empty: bool = False) -> Any:
    if not request.get_data(cache=True):
        if allow_empty:
            return {}
        raise ApiError(400, "the request needs a JSON body")
    if not request.is_json:
        raise ApiError(
            415, f"send the body as application/json (got {request.content_type or 'no type'})"
        )
    data = parse_json()
    if data is None:
        raise ApiError(400, "the body is not valid JSON")
    return data


def parse_json() -> Any:
    """The request's JSON body, None when it is not JSON; ApiError when nested too deeply."""
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # the parser's own guard against very deep nesting
        raise ApiError(
            400, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def _query_values(model: type[BaseModel]) -> dict[str, Any]:
    unknown = sorted(set(request.args) - set(model.model_fields))
    if unknown:
        raise ApiError(
            422,
            f"unknown query parameter(s): {', '.join(unknown)}; "
            f"accepted: {', '.join(model.model_fields) or 'none'}",
        )
    return {name: request.args.get(name) for name in request.args}


def binary_response(data: bytes, media_type: str, **headers: str) -> Response:
    response = Response(data, mimetype=media_type)
    response.headers.update(headers)
    return response
