"""Each API's OpenAPI document (`GET /openapi.json`) against the OpenAPI 3 specification,
against the routes the app really serves, and against what those routes really answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft4Validator, FormatChecker
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from werkzeug.test import TestResponse

from auth_service.api import create_app as create_auth_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base as AuthBase
from batch_service.api import create_app as create_batch_app
from batch_service.models import Base as BatchBase
from batch_service.models import PartnerSummary
from member_service.api import create_app as create_member_app
from member_service.models import Base as MemberBase
from member_service.models import FavoriteStyle, User
from shared.storage.db import Database, utcnow
from tests.schema import create_tables
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

SERVICES = ("auth", "member", "batch")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Flask adds these to every rule by itself; they are not operations anyone wrote.
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
MEMBER_ID = "5f0c7f5e-8d0b-4a8e-9a53-2f4f1c2d9b71"

# CONTRACT.md's HTTP table: every error it promises must be in the documents.
CONTRACT_ERRORS = {
    ("auth", "post", "/auth/signup"): {
        400: "validation_failed",
        409: "email_taken",
        413: "payload_too_large",
        415: "unsupported_media_type",
        503: "unavailable",
    },
    ("auth", "post", "/auth/login"): {400: "validation_failed", 401: "invalid_credentials"},
    ("member", "get", "/members/{member_id}"): {404: "not_found"},
    ("batch", "get", "/partners/{partner_id}/summary"): {404: "not_found"},
    **{
        (service, "get", "/health/ready"): {503: "unavailable"}
        for service in ("auth", "member", "batch")
    },
}

BASES = {"auth": AuthBase, "member": MemberBase, "batch": BatchBase}


def build_app(service: str, database: Database) -> Flask:
    """The service's API, built by its factory as the process builds it."""
    if service == "auth":
        return create_auth_app(database, TokenIssuer("k" * 32), hasher=FAST_HASHER)
    if service == "member":
        return create_member_app(database)
    return create_batch_app(database)


@dataclass
class Api:
    """One service's app, its test client, its database and its served document."""

    service: str
    app: Flask
    client: FlaskClient
    database: Database

    @property
    def document(self) -> dict[str, Any]:
        """What `GET /openapi.json` answers, parsed."""
        response = self.client.get("/openapi.json")
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        document: dict[str, Any] = json.loads(response.get_data())
        return document


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Builds a service's API on a fresh SQLite file (or on `url`, as given)."""
    made: list[Database] = []

    def make(service: str, url: str | None = None, tables: bool = True) -> Api:
        url = url or f"sqlite:///{tmp_path / f'{service}-{len(made)}.db'}"
        database = Database.from_url(url, BASES[service].metadata)
        if tables:
            create_tables(database)
        made.append(database)
        app = build_app(service, database)
        app.config["TESTING"] = True
        return Api(service, app, app.test_client(), database)

    yield make
    for database in made:
        database.engine.dispose()


def flask_path(rule: str) -> str:
    """`/members/<member_id>` as OpenAPI writes it, `/members/{member_id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def served_operations(app: Flask) -> set[tuple[str, str]]:
    """(method, path) of every route the app has, as the document would name it."""
    return {
        (method.lower(), flask_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - AUTOMATIC_METHODS
    }


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation in the document."""
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def pointer(*parts: str) -> str:
    """A JSON pointer to `parts` (escaping `/` and `~` as RFC 6901 says)."""
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def response_validator(
    document: dict[str, Any], method: str, path: str, status: int, media_type: str
) -> Draft4Validator:
    """A validator for the schema the document gives this answer (its `$ref`s resolved in
    the document). OpenAPI 3.0's Schema Object is a draft-4 dialect."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, not documented"
    assert media_type in responses[str(status)]["content"], f"{status} not as {media_type}"
    registry: Registry[Any] = Registry().with_resource(
        "urn:openapi", Resource.from_contents(document, default_specification=DRAFT4)
    )
    where = pointer("paths", path, method, "responses", str(status), "content", media_type)
    return Draft4Validator(
        {"$ref": f"urn:openapi#{where}/schema"}, registry=registry, format_checker=FormatChecker()
    )


def documented_properties(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """The properties a (possibly `$ref`/`allOf`) schema names."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return documented_properties(document, document["components"]["schemas"][name])
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= documented_properties(document, part)
    return names


def assert_answer_documented(api: Api, method: str, path: str, response: TestResponse) -> None:
    """The answer's status is documented for the route, its body validates against the
    documented schema, and it carries no field the document does not name."""
    document = api.document
    media_type = response.mimetype
    validator = response_validator(document, method, path, response.status_code, media_type)
    body: Any = response.get_json() if media_type == "application/json" else response.text
    errors = [e.message for e in validator.iter_errors(body)]
    assert not errors, f"{method} {path} {response.status_code}: {errors}\n{body}"
    if isinstance(body, dict) and path != "/openapi.json":
        schema = document["paths"][path][method]["responses"][str(response.status_code)]
        names = documented_properties(document, schema["content"][media_type]["schema"])
        assert set(body) <= names, f"undocumented fields: {set(body) - names}"


# --- the documents themselves -----------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_document_is_valid_openapi_3(make_api: Callable[..., Api], service: str) -> None:
    document = make_api(service).document

    assert document["openapi"].startswith("3.")
    validate_openapi(document)


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_the_app_serves_is_documented(
    make_api: Callable[..., Api], service: str
) -> None:
    api = make_api(service)

    undocumented = served_operations(api.app) - documented_operations(api.document)

    assert not undocumented, f"routes missing from {service}'s /openapi.json: {undocumented}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_documented_route_is_served(make_api: Callable[..., Api], service: str) -> None:
    api = make_api(service)

    unserved = documented_operations(api.document) - served_operations(api.app)

    assert not unserved, f"{service}'s /openapi.json documents routes it lacks: {unserved}"


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_document_is_the_same_bytes_every_time(
    make_api: Callable[..., Api], service: str
) -> None:
    first, second = make_api(service), make_api(service)

    answers = [api.client.get("/openapi.json").get_data() for api in (first, first, second)]

    assert answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize(("operation", "errors"), CONTRACT_ERRORS.items(), ids=str)
def test_every_error_the_contract_promises_is_documented(
    make_api: Callable[..., Api], operation: tuple[str, str, str], errors: dict[int, str]
) -> None:
    service, method, path = operation
    responses = make_api(service).document["paths"][path][method]["responses"]

    for status, code in errors.items():
        assert str(status) in responses, f"{method} {path}: {status} not documented"
        [error_schema, narrowed] = responses[str(status)]["content"]["application/json"]["schema"][
            "allOf"
        ]
        assert error_schema == {"$ref": "#/components/schemas/Error"}
        assert code in narrowed["properties"]["error"]["enum"]


def test_error_body_is_the_contracts(make_api: Callable[..., Api]) -> None:
    error = make_api("auth").document["components"]["schemas"]["Error"]

    assert set(error["properties"]) == {"error", "message", "fields"}
    assert sorted(error["required"]) == ["error", "message"]
    assert error["properties"]["fields"]["additionalProperties"] == {
        "type": "array",
        "items": {"type": "string"},
    }


def test_metrics_are_documented_as_prometheus_text(make_api: Callable[..., Api]) -> None:
    for service in SERVICES:
        answers = make_api(service).document["paths"]["/metrics"]["get"]["responses"]

        assert list(answers["200"]["content"]) == ["text/plain"]


# --- the documents against what the routes answer ---------------------------------------


def test_auth_answers_are_documented(make_api: Callable[..., Api]) -> None:
    api = make_api("auth")
    body = signup_body()

    def check(method: str, path: str, response: TestResponse, status: int) -> None:
        assert response.status_code == status, response.get_data(as_text=True)
        assert_answer_documented(api, method, path, response)

    check("post", "/auth/signup", api.client.post("/auth/signup", json=body), 201)
    check("post", "/auth/signup", api.client.post("/auth/signup", json=body), 409)
    check("post", "/auth/signup", api.client.post("/auth/signup", json={"role": "ADMIN"}), 400)
    check("post", "/auth/signup", api.client.post("/auth/signup", data="x"), 415)
    too_large = {**body, "name": "x" * 70_000}
    check("post", "/auth/signup", api.client.post("/auth/signup", json=too_large), 413)
    login = {"email": body["email"], "password": body["password"]}
    check("post", "/auth/login", api.client.post("/auth/login", json=login), 200)
    wrong = {**login, "password": "not the password"}
    check("post", "/auth/login", api.client.post("/auth/login", json=wrong), 401)
    check("post", "/auth/login", api.client.post("/auth/login", json={}), 400)


def test_member_answers_are_documented(make_api: Callable[..., Api]) -> None:
    api = make_api("member")
    with api.database.sessions() as session:
        session.add(User(uuid=MEMBER_ID, nickname="minji", created_at=utcnow()))
        session.add_all(FavoriteStyle(member_uuid=MEMBER_ID, style_id=s) for s in (3, 1))
        session.commit()

    found = api.client.get(f"/members/{MEMBER_ID}")
    missing = api.client.get("/members/no-such-member")

    assert (found.status_code, missing.status_code) == (200, 404)
    assert_answer_documented(api, "get", "/members/{member_id}", found)
    assert_answer_documented(api, "get", "/members/{member_id}", missing)


def test_batch_answers_are_documented(make_api: Callable[..., Api]) -> None:
    api = make_api("batch")
    with api.database.sessions() as session:
        session.add(PartnerSummary(partner_id=MEMBER_ID, created_at=utcnow()))
        session.commit()

    found = api.client.get(f"/partners/{MEMBER_ID}/summary")
    missing = api.client.get("/partners/no-such-partner/summary")

    assert (found.status_code, missing.status_code) == (200, 404)
    assert_answer_documented(api, "get", "/partners/{partner_id}/summary", found)
    assert_answer_documented(api, "get", "/partners/{partner_id}/summary", missing)


@pytest.mark.parametrize("service", SERVICES)
def test_shared_route_answers_are_documented(make_api: Callable[..., Api], service: str) -> None:
    api = make_api(service)

    for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json"):
        response = api.client.get(path)
        assert response.status_code == 200, path
        assert_answer_documented(api, "get", path, response)


@pytest.mark.parametrize("service", SERVICES)
def test_unreachable_database_answers_are_documented(
    make_api: Callable[..., Api], service: str, tmp_path: Path
) -> None:
    directory = tmp_path / "a-directory-not-a-database"  # SQLite cannot open it
    directory.mkdir()
    api = make_api(service, url=f"sqlite:///{directory}", tables=False)
    reads = {  # a route of the service's own that reads its database
        "auth": ("post", "/auth/login", "/auth/login", {"email": "a@x.com", "password": "x"}),
        "member": ("get", "/members/{member_id}", f"/members/{MEMBER_ID}", None),
        "batch": ("get", "/partners/{partner_id}/summary", f"/partners/{MEMBER_ID}/summary", None),
    }
    method, documented, path, body = reads[service]

    ready = api.client.get("/health/ready")
    read = api.client.open(path, method=method.upper(), json=body)

    assert (ready.status_code, read.status_code) == (503, 503)
    assert_answer_documented(api, "get", "/health/ready", ready)
    assert_answer_documented(api, method, documented, read)


# --- the request body schema against the validator it was generated from ----------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"role": "PARTNER", "favoriteStyles": []},
        {"role": "ADMIN"},
        {"gender": "male"},
        {"phone": "010 1234 5678"},
        {"phone": "1234"},
        {"password": "short"},
        {"nickname": "m"},
        {"favoriteStyles": [1, 1]},
        {"favoriteStyles": [0]},
        {"favoriteStyles": list(range(1, 22))},
        {"unknown": "field"},
    ],
    ids=json.dumps,
)
def test_documented_signup_body_agrees_with_the_api(
    make_api: Callable[..., Api], changes: dict[str, Any]
) -> None:
    api = make_api("auth")
    body = signup_body(**changes)
    document = api.document
    registry: Registry[Any] = Registry().with_resource(
        "urn:openapi", Resource.from_contents(document, default_specification=DRAFT4)
    )
    schema = Draft4Validator({"$ref": "urn:openapi#/components/schemas/Signup"}, registry=registry)

    accepted = api.client.post("/auth/signup", json=body).status_code == 201

    assert schema.is_valid(body) == accepted
