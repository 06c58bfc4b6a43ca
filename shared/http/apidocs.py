"""OpenAPI documents for the HTTP APIs, generated from their marshmallow schemas.

Each API declares its own routes as `Route`s beside the code that serves them and
calls `install_openapi`; the routes every API shares (health, metrics, this document)
and the contract's JSON error body are declared here once. The document is built when
the app is, and `GET /openapi.json` answers the same bytes every time.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from flask import Flask, Response
from marshmallow import EXCLUDE, Schema, fields, validate

from shared.http.web import MAX_BODY_BYTES
from shared.messaging.pipeline import _uuid_text, distinct_values

OPENAPI_VERSION = "3.0.3"
# A Flask rule's `<name>` or `<converter:name>`; OpenAPI writes `{name}`.
_RULE_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def package_version() -> str:
    """The installed signup-pipeline version, which every document carries."""
    try:
        return importlib.metadata.version("signup-pipeline")
    except importlib.metadata.PackageNotFoundError:  # run from a bare checkout
        return "0.0.0"


def ecma_pattern(pattern: str) -> str:
    """A marshmallow Regexp's `pattern` as a JSON Schema `pattern`, which is ECMA-262 and
    unanchored: Regexp matches at the start only, and `\\Z` means nothing to ECMA-262."""
    body, end = pattern, ""
    if body.endswith(r"\Z"):
        body, end = body[: -len(r"\Z")], "$"
    if body.startswith("^") and "|" not in body:
        return body + end
    return f"^(?:{body.removeprefix('^')}){end}"


class PipelineConverter(OpenAPIConverter):
    """apispec's converter, plus the JSON Schema keywords our own validators stand for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attribute_functions.append(self.field2pipeline_rules)

    def field2pattern(self, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
        """The Regexp validator's pattern, translated so other languages' tools read it alike."""
        patterns = [
            v.regex.pattern
            for v in field.validators
            if isinstance(v, validate.Regexp) and isinstance(v.regex.pattern, str)
        ]
        return {"pattern": ecma_pattern(patterns[0])} if patterns else {}

    def field2pipeline_rules(self, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
        """`uniqueItems` for distinct lists, `format`/`pattern` for canonical uuids."""
        rules: dict[str, Any] = {}
        for validator in field.validators:
            if validator is distinct_values:
                rules["uniqueItems"] = True
            # The pipeline's uuid rule is a plain function (no JSON Schema keyword of its
            # own): lower-case and hyphenated, as Java's UUID.toString() writes it.
            if validator is _uuid_text:
                rules.update(format="uuid", pattern=CANONICAL_UUID)
        return rules


class PipelinePlugin(MarshmallowPlugin):
    """MarshmallowPlugin with `PipelineConverter`."""

    Converter = PipelineConverter


def schema_name(schema: type[Schema]) -> str:
    """The component name of a schema: its class name without `Schema`."""
    return schema.__name__.removesuffix("Schema")


def new_spec(title: str, description: str, openapi_version: str = OPENAPI_VERSION) -> APISpec:
    """An empty APISpec that converts marshmallow schemas with our rules."""
    return APISpec(
        title=title,
        version=package_version(),
        openapi_version=openapi_version,
        plugins=[PipelinePlugin()],
        info={"description": description},
    )


# --- what every API answers ------------------------------------------------------------


class AnswerSchema(Schema):
    """A body an API answers with. Clients ignore fields they do not know, so the
    document leaves answers open: a field added later breaks no generated client."""

    class Meta:
        unknown = EXCLUDE


class ErrorSchema(AnswerSchema):
    """The contract's error body."""

    error = fields.String(
        required=True,
        metadata={"description": "A stable code for the error; match on this, not the message."},
    )
    message = fields.String(
        required=True, metadata={"description": "Human-readable text; it may change."}
    )
    problems = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        data_key="fields",
        metadata={
            "description": "Only on `validation_failed`: each failing field and its problems "
            "(`_schema` for the body as a whole; a list item's problem starts with `[index]`)."
        },
    )


class HealthSchema(AnswerSchema):
    """A health probe's success body."""

    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


@dataclass(frozen=True)
class ErrorAnswer:
    """An error a route can answer with: its status, stable code and when it happens."""

    status: int
    code: str
    when: str
    example_fields: Mapping[str, list[str]] | None = None


VALIDATION_FAILED = ErrorAnswer(
    400,
    "validation_failed",
    "The body is not a JSON object, or fields break the rules; every problem is listed.",
    {"email": ["Not a valid email address."]},
)
NOT_FOUND = ErrorAnswer(404, "not_found", "Nothing exists under this id.")
PAYLOAD_TOO_LARGE = ErrorAnswer(
    413, "payload_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes."
)
UNSUPPORTED_MEDIA_TYPE = ErrorAnswer(
    415, "unsupported_media_type", "The body is not sent as `Content-Type: application/json`."
)
INTERNAL_ERROR = ErrorAnswer(500, "internal_error", "A bug on our side; nothing was changed.")
UNAVAILABLE = ErrorAnswer(503, "unavailable", "The database is unreachable; retry later.")
JSON_BODY_ERRORS = (VALIDATION_FAILED, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE)


@dataclass(frozen=True)
class Route:
    """One documented HTTP operation: what it takes, and what it answers."""

    method: str
    rule: str  # the Flask rule, e.g. `/members/<member_id>`
    operation_id: str
    summary: str
    status: int
    answer: type[Schema] | Mapping[str, Any]  # a marshmallow schema, or plain JSON Schema
    body: type[Schema] | None = None
    errors: tuple[ErrorAnswer, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)  # path parameter: description
    # query parameter: (description, its JSON Schema); never required
    query: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    media_type: str = "application/json"
    description: str = ""


SHARED_ROUTES = (
    Route(
        "GET",
        "/health/live",
        operation_id="live",
        summary="Liveness: the process answers.",
        status=200,
        answer=HealthSchema,
    ),
    Route(
        "GET",
        "/health/ready",
        operation_id="ready",
        summary="Readiness: the service's database answers.",
        status=200,
        answer=HealthSchema,
        errors=(UNAVAILABLE,),
    ),
    Route(
        "GET",
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics of this process (summed over its workers).",
        status=200,
        answer={"type": "string"},
        media_type="text/plain",
        description="The Prometheus text exposition format; the `Content-Type` names its "
        "version, e.g. `text/plain; version=1.0.0; charset=utf-8`.",
    ),
    Route(
        "GET",
        "/openapi.json",
        operation_id="openapi",
        summary="This document.",
        status=200,
        answer={"type": "object", "description": "An OpenAPI 3 document."},
    ),
)


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: `/members/<member_id>` → `/members/{member_id}`."""
    return _RULE_PARAMETER.sub(r"{\1}", rule)


def _content(spec: APISpec, route: Route) -> dict[str, Any]:
    schema: Any = route.answer
    if isinstance(schema, type):
        schema = spec.components.get_ref("schema", schema_name(schema))
    return {route.media_type: {"schema": dict(schema)}}


def _error_responses(spec: APISpec, answers: Iterable[ErrorAnswer]) -> dict[str, Any]:
    by_status: dict[int, list[ErrorAnswer]] = {}
    for answer in answers:
        by_status.setdefault(answer.status, []).append(answer)
    responses = {}
    for status, same in sorted(by_status.items()):
        first = same[0]
        example: dict[str, Any] = {"error": first.code, "message": first.when}
        if first.example_fields is not None:
            example["fields"] = dict(first.example_fields)
        # The shared body, narrowed to this status's codes, so a tool knows which to expect.
        schema = {
            "allOf": [
                spec.components.get_ref("schema", "Error"),
                {
                    "type": "object",
                    "properties": {"error": {"type": "string", "enum": [a.code for a in same]}},
                },
            ]
        }
        responses[str(status)] = {
            "description": " ".join(f"`{a.code}`: {a.when}" for a in same),
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    return responses


def _operation(spec: APISpec, route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
    if route.description:
        operation["description"] = route.description
    names = _RULE_PARAMETER.findall(route.rule)
    if names:
        operation["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": route.parameters.get(name, ""),
                "schema": {"type": "string"},
            }
            for name in names
        ]
    for name, (description, schema) in route.query.items():
        operation.setdefault("parameters", []).append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": dict(schema),
            }
        )
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": spec.components.get_ref("schema", schema_name(route.body))
                }
            },
        }
    operation["responses"] = {
        str(route.status): {"description": route.summary, "content": _content(spec, route)},
        **_error_responses(spec, (*route.errors, INTERNAL_ERROR)),
    }
    return operation


def openapi_document(title: str, description: str, routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI document of an API serving `routes` and the shared ones."""
    spec = new_spec(title, description)
    every_route = (*routes, *SHARED_ROUTES)
    schemas: dict[str, type[Schema]] = {"Error": ErrorSchema}
    for route in every_route:
        for schema in (route.body, route.answer):
            if isinstance(schema, type):
                schemas[schema_name(schema)] = schema
    for name, schema in schemas.items():
        spec.components.schema(name, schema=schema)
    paths: dict[str, dict[str, Any]] = {}
    for route in every_route:
        paths.setdefault(openapi_path(route.rule), {})[route.method.lower()] = _operation(
            spec, route
        )
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def install_openapi(app: Flask, title: str, description: str, routes: Iterable[Route]) -> None:
    """Serve the API's OpenAPI document at `GET /openapi.json`."""
    # Built once, keys sorted: every answer is the same bytes, whatever order routes
    # were declared or registered in.
    body = json.dumps(openapi_document(title, description, routes), indent=2, sort_keys=True)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return Response(body, mimetype="application/json")
