"""The OpenAPI 3.1 document, generated from the routes' ``@operation`` declarations and their
pydantic models (nothing is written by hand, so it cannot drift from the code)."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel

from services.api.routing import Operation
from services.api.schemas import ErrorResponse

REF_TEMPLATE = "#/components/schemas/{model}"
_RULE_ARGUMENT = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_CONVERTER_SCHEMAS = {"int": {"type": "integer"}, "float": {"type": "number"}}
STATUS_TEXT = {
    200: "OK",
    202: "Accepted",
    400: "Malformed request",
    401: "No valid API key",
    403: "The API key lacks the scope",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the stored state",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid parameters",
    429: "Rate limited",
    500: "Internal error",
    503: "A dependency is unavailable",
}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str = "serialization") -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)  # type: ignore[arg-type]
        for name, definition in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, definition)
        self.schemas.setdefault(model.__name__, schema)
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    def inline(self, model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
        for name, definition in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, definition)
        return schema


def openapi_document(app: Flask, *, title: str = "medgraph API", version: str = "1") -> dict:
    components = _Components()
    error_ref = components.ref(ErrorResponse)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        spec: Operation | None = getattr(app.view_functions[rule.endpoint], "operation", None)
        if spec is None:
            continue
        path = _RULE_ARGUMENT.sub(lambda match: "{" + match.group(2) + "}", rule.rule)
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": _CONVERTER_SCHEMAS.get(converter or "", {"type": "string"}),
            }
            for converter, name in _RULE_ARGUMENT.findall(rule.rule)
        ]
        if spec.query is not None:
            schema = components.inline(spec.query)
            required = set(schema.get("required", []))
            for name, field_schema in schema.get("properties", {}).items():
                parameters.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "description": field_schema.get("description", ""),
                        "schema": field_schema,
                    }
                )
        entry: dict[str, Any] = {
            "operationId": rule.endpoint.replace(".", "_"),
            "summary": spec.summary,
            "tags": [spec.tag],
            "x-required-scope": spec.scope,
            "responses": _responses(spec, components, error_ref),
        }
        if spec.description:
            entry["description"] = spec.description
        if parameters:
            entry["parameters"] = parameters
        if spec.body is not None:
            entry["requestBody"] = _request_body(spec, components)
        if spec.scope != "public":
            entry["security"] = [{"bearerAuth": []}]
        paths.setdefault(path, {})[spec.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Content-based chest X-ray retrieval on a Neo4j image graph "
            '(Haq, Moradi & Wang). Every error is JSON: `{"error": {"status", "message"}}`. '
            "Each operation names the API-key scope it needs in `x-required-scope`.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _responses(spec: Operation, components: _Components, error_ref: dict) -> dict[str, Any]:
    if spec.response is not None:
        content = {spec.media_type: {"schema": components.ref(spec.response)}}
    else:
        content = {spec.media_type: {"schema": {"type": "string", "format": "binary"}}}
    responses: dict[str, Any] = {
        str(spec.status): {"description": STATUS_TEXT.get(spec.status, "OK"), "content": content}
    }
    statuses = set(spec.errors) | {500}
    if spec.query is not None or spec.body is not None:
        statuses.add(422)
    if spec.scope != "public":
        statuses |= {401, 403}
    for status in sorted(statuses):
        if str(status) in responses:
            continue
        if status == 503 and spec.response is not None and spec.status == 200:
            # Readiness answers 503 with the same body as 200.
            body = {"application/json": {"schema": components.ref(spec.response)}}
        else:
            body = {"application/json": {"schema": error_ref}}
        responses[str(status)] = {"description": STATUS_TEXT.get(status, "Error"), "content": body}
    return responses


def _request_body(spec: Operation, components: _Components) -> dict[str, Any]:
    assert spec.body is not None
    ref = components.ref(spec.body, mode="validation")
    content: dict[str, Any] = {"application/json": {"schema": ref}}
    if spec.upload_field is not None:
        form_schema = components.inline(spec.body)
        multipart = {
            **form_schema,
            "properties": {
                spec.upload_field: {
                    "type": "string",
                    "format": "binary",
                    "description": "The query image: PNG, JPEG or DICOM.",
                },
                **form_schema.get("properties", {}),
            },
        }
        content["multipart/form-data"] = {"schema": multipart}
        content["application/x-www-form-urlencoded"] = {"schema": ref}
    required = any(field.is_required() for field in spec.body.model_fields.values())
    return {"required": required or spec.upload_field is not None, "content": content}
