"""docs/CONTRACT.md, the project's outside contract, against the code: every HTTP route,
error code, topic, event field, Kafka header, environment variable and process command
it names exists, and every one the code has is named there.

Left out on purpose: Flask's own `static` route (no API serves files) and the `HEAD` and
`OPTIONS` methods Flask adds to every rule by itself.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import MetaData

from auth_service.api import create_app as create_auth_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base as AuthBase
from batch_service.api import create_app as create_batch_app
from batch_service.models import Base as BatchBase
from member_service.api import create_app as create_member_app
from member_service.models import Base as MemberBase
from operations import cli
from shared import config
from shared.http import health
from shared.http.health import ConsumerState, HealthServer
from shared.http.web import GUNICORN_ERROR_CODES
from shared.messaging import deadletters
from shared.messaging.kafka import pipeline_topics
from shared.messaging.outbox import cloudevent_headers
from shared.messaging.pipeline import TOPICS
from shared.runtime import service_main
from shared.storage.db import Database
from tests.schema import create_tables
from tests.unit.pipeline_harness import FAST_HASHER

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "CONTRACT.md"
SERVICES = config.SERVICES  # auth, member, batch
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
BASES = {"auth": AuthBase, "member": MemberBase, "batch": BatchBase}
INTERNAL_ERROR = (500, "internal_error")  # every route; the document says so once

CODE_SPAN = re.compile(r"`([^`]+)`")
ROUTE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) (/\S*)$")
PATH_PARAMETER = re.compile(r"<[^<>]+>|\{[^{}]+\}")
ERROR = re.compile(r"\b([1-5][0-9]{2}) `([a-z_]+)`")
VARIABLE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")
HELP_OPTION = re.compile(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", re.MULTILINE)


# --- reading the document ---------------------------------------------------------------


def contract_text() -> str:
    return CONTRACT.read_text(encoding="utf-8")


def section(heading: str, text: str | None = None) -> str:
    """The body under the heading `heading` (any level), up to the next heading."""
    text = contract_text() if text is None else text
    match = re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"docs/CONTRACT.md has no heading {heading!r}"
    rest = text[match.end() :]
    end = re.search(r"^#+ ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _cells(line: str) -> list[str]:
    """A table row's cells; `\\|` is a pipe inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def tables(body: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in `body`, each as its rows keyed by the header's cells."""
    found: list[list[dict[str, str]]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*\|(\s*:?-+:?\s*\|)+\s*", lines[i + 1])
        ):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]), strict=True)))
                i += 1
            found.append(rows)
            continue
        i += 1
    return found


def table(heading: str, *columns: str) -> list[dict[str, str]]:
    """The one table under `heading` whose header has exactly `columns`."""
    matching = [t for t in tables(section(heading)) if t and tuple(t[0]) == columns]
    assert len(matching) == 1, f"under {heading!r}, {len(matching)} tables headed {columns}"
    return matching[0]


def spans(cell: str) -> list[str]:
    return CODE_SPAN.findall(cell)


def every_span() -> set[str]:
    """Every code span in the document's text, outside fenced blocks (line by line: no
    span here crosses a line)."""
    text = re.sub(r"^```.*?^```", "", contract_text(), flags=re.MULTILINE | re.DOTALL)
    return {s for line in text.splitlines() for s in spans(line)}


def shape(path: str) -> str:
    """`/members/<uuid>`, `/members/<member_id>` and `/members/{member_id}` alike."""
    return PATH_PARAMETER.sub("{}", path)


# --- the apps ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Flask]]:
    """Each service's API as its factory builds it, on a SQLite file."""
    directory = tmp_path_factory.mktemp("contract")
    databases = {
        service: Database.from_url(f"sqlite:///{directory / service}.db", BASES[service].metadata)
        for service in SERVICES
    }
    for database in databases.values():
        create_tables(database)
    built = {
        "auth": create_auth_app(databases["auth"], TokenIssuer("k" * 32), hasher=FAST_HASHER),
        "member": create_member_app(databases["member"]),
        "batch": create_batch_app(databases["batch"]),
    }
    for app in built.values():
        app.config["TESTING"] = True
    yield built
    for database in databases.values():
        database.engine.dispose()


def served_routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (method, shape(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - AUTOMATIC_METHODS
    }


def openapi_errors(app: Flask) -> dict[tuple[str, str], set[tuple[int, str]]]:
    """(method, path shape) -> the (status, error code) pairs its OpenAPI document lists."""
    document = json.loads(app.test_client().get("/openapi.json").get_data())
    errors: dict[tuple[str, str], set[tuple[int, str]]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            answers = errors.setdefault((method.upper(), shape(path)), set())
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                narrowed = response["content"]["application/json"]["schema"]["allOf"][1]
                answers |= {(int(status), c) for c in narrowed["properties"]["error"]["enum"]}
    return errors


def http_rows() -> list[dict[str, str]]:
    return table("HTTP", "service (default port)", "method and path", "success", "errors")


def documented_routes() -> dict[tuple[str, str, str], set[tuple[int, str]]]:
    """(service, method, path shape) -> the errors its row names."""
    routes: dict[tuple[str, str, str], set[tuple[int, str]]] = {}
    for row in http_rows():
        who = row["service (default port)"]
        services = SERVICES if who == "every service" else (who.split()[0],)
        assert set(services) <= set(SERVICES), f"unknown service {who!r}"
        named = [m for s in spans(row["method and path"]) if (m := ROUTE.match(s))]
        assert named, f"no route in {row['method and path']!r}"
        errors = {(int(status), code) for status, code in ERROR.findall(row["errors"])}
        for service in services:
            for match in named:
                key = (service, match[1], shape(match[2]))
                assert key not in routes, f"{key} named twice"
                routes[key] = errors
    return routes


# --- HTTP -------------------------------------------------------------------------------


def test_every_documented_route_is_served(apps: dict[str, Flask]) -> None:
    served = {(s, m, p) for s, app in apps.items() for m, p in served_routes(app)}

    unserved = set(documented_routes()) - served

    assert not unserved, f"docs/CONTRACT.md names routes no app serves: {sorted(unserved)}"


def test_every_served_route_is_documented(apps: dict[str, Flask]) -> None:
    served = {(s, m, p) for s, app in apps.items() for m, p in served_routes(app)}

    undocumented = served - set(documented_routes())

    assert not undocumented, f"routes missing from docs/CONTRACT.md: {sorted(undocumented)}"


def test_default_ports_are_the_services(apps: dict[str, Flask]) -> None:
    ports = {
        row["service (default port)"].split()[0]: row["service (default port)"]
        for row in http_rows()
        if row["service (default port)"] != "every service"
    }

    for service in SERVICES:
        port = service_main_call(service)[0]
        assert ports[service] == f"{service} ({port})"


def test_each_routes_errors_are_the_ones_it_answers(apps: dict[str, Flask]) -> None:
    """Both ways, against the OpenAPI document each app serves (which a test of its own
    holds to the real answers); 500 `internal_error` is named once, for every route."""
    answered = {
        (service, method, path): errors
        for service, app in apps.items()
        for (method, path), errors in openapi_errors(app).items()
    }

    for route, errors in documented_routes().items():
        assert errors | {INTERNAL_ERROR} == answered[route], route


def test_errors_any_route_can_answer(apps: dict[str, Flask]) -> None:
    rows = table("HTTP", "status", "`error`", "when")
    named = {(int(row["status"]), spans(row["`error`"])[0]) for row in rows}

    assert named == {(404, "not_found"), (405, "method_not_allowed"), INTERNAL_ERROR}
    for service, app in apps.items():
        client = app.test_client()
        missing = client.get("/no-such-route")
        wrong_method = client.delete("/health/live")
        assert (missing.status_code, missing.get_json()["error"]) == (404, "not_found")
        assert (wrong_method.status_code, wrong_method.get_json()["error"]) == (
            405,
            "method_not_allowed",
        )
        for errors in openapi_errors(app).values():
            assert INTERNAL_ERROR in errors, service


def test_gunicorn_refusals_are_the_ones_it_answers() -> None:
    rows = table("HTTP", "status", "`error`")

    named = {int(row["status"]): spans(row["`error`"])[0] for row in rows}

    assert named == GUNICORN_ERROR_CODES


def test_worker_health_routes_are_the_ones_a_worker_serves() -> None:
    rows = table("A worker's health port", "method and path", "200 when", "otherwise")
    named = set()
    for row in rows:
        [route] = spans(row["method and path"])
        match = ROUTE.match(route)
        assert match and match[1] == "GET", route
        named.add(match[2])
    source = ast.parse(Path(health.__file__).read_text(encoding="utf-8"))
    served = {
        node.value
        for node in ast.walk(source)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"/[a-z/]+", node.value)
    }
    server = HealthServer.__new__(HealthServer)  # its answers, without binding a port
    server._state = ConsumerState()
    server._state.on_partitions_assigned([])
    server._join_timeout = 120.0
    server._bootstrap_servers = None

    status, body = server.answer("/no-such-route")

    assert named == served
    assert server.answer("/health/live") == (200, {"status": "ok"})
    assert (status, body["error"]) == (404, "not_found")


# --- topics, events and headers ---------------------------------------------------------


def test_every_topic_is_named_and_every_named_topic_exists() -> None:
    rows = table(
        "Topics and events",
        "topic",
        "produced by",
        "key",
        "value (UTF-8 JSON, camelCase)",
        "consumed by",
    )
    names = {topic.name for topic in TOPICS}
    dead_letters = {topic.dead_letter for topic in TOPICS}

    named = {s for row in rows for s in spans(row["topic"])}

    assert named - {"<topic>.DLT"} == names
    everywhere = {s for s in every_span() if s.endswith(".DLT")}
    assert everywhere <= dead_letters | {"<topic>.DLT"}


def test_topic_layout_is_the_codes() -> None:
    rows = table(
        "Topics and events", "topic", "`ce_source` of its events", "consumer group", "partitions"
    )
    by_name = {spans(row["topic"])[0]: row for row in rows}

    assert set(by_name) == set(pipeline_topics())
    for topic in TOPICS:
        row = by_name[topic.name]
        assert spans(row["`ce_source` of its events"]) == [topic.producer]
        assert spans(row["consumer group"]) == [topic.consumer_group]
        assert int(row["partitions"]) == topic.partitions
        assert int(by_name[topic.dead_letter]["partitions"]) == pipeline_topics()[topic.dead_letter]


def schema_fields(topic_name: str) -> set[str]:
    [topic] = [t for t in TOPICS if t.name == topic_name]
    return {field.data_key or name for name, field in topic.schema().fields.items()}


def test_event_fields_are_each_schemas_data_keys() -> None:
    rows = table("Event fields", "topic", "field", "JSON type", "rule")
    named: dict[str, set[str]] = {}
    for row in rows:
        [topic], [field] = spans(row["topic"]), spans(row["field"])
        named.setdefault(topic, set()).add(field)

    assert set(named) == {topic.name for topic in TOPICS}
    for topic, fields in named.items():
        assert fields == schema_fields(topic), topic


def test_event_values_in_the_topic_table_have_the_schemas_fields() -> None:
    rows = table(
        "Topics and events",
        "topic",
        "produced by",
        "key",
        "value (UTF-8 JSON, camelCase)",
        "consumed by",
    )
    for row in rows:
        [topic] = spans(row["topic"])
        if topic.endswith(".DLT"):
            continue
        value = spans(row["value (UTF-8 JSON, camelCase)"])[0]
        assert set(re.findall(r'"(\w+)":', value)) == schema_fields(topic), topic


def written_headers() -> tuple[set[str], set[str]]:
    """The header names the outbox relay writes (with a traceparent) and those a dead
    letter adds."""
    row = SimpleNamespace(
        event_id="b3e1a9c2-4f6d-4e8a-9c1b-7d2e5f8a0c34",
        source="auth-service",
        topic="profile-insert",
        created_at=dt.datetime(2026, 11, 21, 22, 15, 3, tzinfo=dt.UTC),
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    return {name for name, _ in cloudevent_headers(row)}, set(deadletters.HEADERS)


def test_kafka_headers_are_the_ones_written() -> None:
    rows = table("Kafka record headers", "header", "written by", "value")
    outbox, dead_letter = written_headers()
    by_name = {spans(row["header"])[0]: row["written by"] for row in rows}

    assert set(by_name) == outbox | dead_letter
    for name, writer in by_name.items():
        assert ("relay" in writer) == (name in outbox), name
    looks_like_a_header = re.compile(r"ce_[a-z]+|dlt-[a-z-]+")
    everywhere = {s for s in every_span() if looks_like_a_header.fullmatch(s)}
    assert everywhere <= outbox | dead_letter


# --- configuration ----------------------------------------------------------------------


def variables(rows: list[dict[str, str]]) -> list[str]:
    return [s for row in rows for s in spans(row["variable"]) if VARIABLE.fullmatch(s)]


def test_every_environment_variable_is_named_and_exists() -> None:
    named = variables(
        table("Configuration (environment variables)", "variable", "meaning", "default")
    )

    assert len(named) == len(set(named)), "a variable is named twice"
    assert set(named) == set(config.ENVIRONMENT)


def test_developer_tool_variables_are_the_codes() -> None:
    rows = table("Variables of the developer tools", "variable", "meaning", "default")

    assert variables(rows) == [config.BENCH_POSTGRES_VARIABLE]


# --- processes --------------------------------------------------------------------------


def service_main_call(service: str) -> tuple[int, list[str]]:
    """The default port and the commands `python -m <service>_service` is built with."""
    main = ROOT / f"{service}_service" / "__main__.py"
    for node in ast.walk(ast.parse(main.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "service_main":
            port, commands = node.args[1], node.args[3]
            assert isinstance(port, ast.Constant) and isinstance(commands, ast.Dict)
            names = [
                k.value
                for k in commands.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
            assert isinstance(port.value, int)
            return port.value, names
    raise AssertionError(f"{main} does not call service_main")


def help_options(
    capsys: pytest.CaptureFixture[str], command: Callable[..., Any], *args: Any
) -> set[str]:
    """The options `command(*args)` lists when its argv asks for --help, except --help."""
    with pytest.raises(SystemExit) as exited:
        command(*args)
    assert exited.value.code == 0
    return set(HELP_OPTION.findall(capsys.readouterr().out)) - {"--help"}


def process_rows(first: str) -> dict[str, set[str]]:
    """A process table's commands (up to their first option) -> the options it names."""
    rows = table("Processes", "command", first)
    commands: dict[str, set[str]] = {}
    for row in rows:
        [command] = spans(row["command"])
        words = re.split(r" (?=\[|<)", command, maxsplit=1)
        assert words[0] not in commands, f"{words[0]} named twice"
        commands[words[0]] = set(OPTION.findall(command))
    return commands


def test_service_commands_are_the_ones_each_service_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    named = process_rows("what it runs")
    expected = {
        f"python -m {service}_service {command}": (service, port, command)
        for service in SERVICES
        for port, commands in [service_main_call(service)]
        for command in commands
    }

    assert set(named) == set(expected)
    for text, (service, port, command) in expected.items():
        commands = {command: lambda *_: None}
        options = help_options(
            capsys, service_main, service, port, MetaData(), commands, [command, "--help"]
        )
        assert named[text] == options, text


def test_operator_commands_are_the_ones_signup_pipeline_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    named = process_rows("what it does")

    def choices(*argv: str) -> list[str]:
        """The sub-commands `signup-pipeline *argv --help` offers."""
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        offered: str = re.findall(r"\{([a-z,]+)\}", capsys.readouterr().out)[0]
        return offered.split(",")

    # Commands made of sub-commands (`dlt list`, `reconcile batch`) are named by those.
    offered = choices()
    grouped = [name for name in ("dlt", "reconcile") if name in offered]
    commands = [[name] for name in offered if name not in grouped]
    commands += [[name, action] for name in grouped for action in choices(name)]

    assert set(named) == {" ".join(["signup-pipeline", *words]) for words in commands}
    for words in commands:
        options = help_options(capsys, cli.main, [*words, "--help"])
        assert named[" ".join(["signup-pipeline", *words])] == options, words


# --- the document itself ----------------------------------------------------------------


def test_the_document_says_it_is_the_contract_and_kept_true() -> None:
    opening = contract_text()[:1200]

    assert "This is the project's contract" in opening
    assert "tests/unit/test_contract_document.py" in opening
