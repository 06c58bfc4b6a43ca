"""Generated requests against every route of the three APIs: never a 500, always a JSON
error with the security headers, never a row or an event from a rejected signup, never
a password, email or phone in an event or an error body.

The auth API is fuzzed with its rate limits off and on (counted in memory, and in Redis:
scripts/ensure-redis.sh starts it): a request the limiter cannot count (an email with a
lone surrogate, say) must not be a 500 either, and a 429 is JSON, with Retry-After, and
documented."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from secrets import token_bytes
from typing import Any

import hypothesis
import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import strategies as st
from schemathesis import GenerationMode
from sqlalchemy import func, select

from auth_service.api import create_app as create_auth_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base as AuthBase
from auth_service.models import Member
from auth_service.models import OutboxEvent as AuthOutbox
from auth_service.ratelimit import rate_limiter
from batch_service.api import create_app as create_batch_app
from batch_service.models import Base as BatchBase
from member_service.api import create_app as create_member_app
from member_service.models import Base as MemberBase
from shared.config import RateLimitSettings
from shared.http.web import SECURITY_HEADERS
from shared.storage.db import Database
from tests.fuzz.conftest import CASES
from tests.schema import create_tables
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

pytestmark = pytest.mark.fuzz

# Enough to find what the schemas let through, bounded so the tier stays under a minute.
EXAMPLES = {"POST /auth/signup": 400, "POST /auth/login": 200, "GET /auth/me": 150}
OTHER_EXAMPLES = 60
SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,  # the same cases on every run: a failure in CI reproduces here
)


@pytest.fixture(scope="module")
def databases_per_pass(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, dict[str, Database]]]:
    """limits -> the three databases of that pass, made when first asked for."""
    passes: dict[str, dict[str, Database]] = {}
    yield passes
    for found in passes.values():
        for database in found.values():
            database.engine.dispose()


@pytest.fixture
def databases(
    databases_per_pass: dict[str, dict[str, Database]],
    tmp_path_factory: pytest.TempPathFactory,
    limits: str,
) -> dict[str, Database]:
    """The databases of this pass: a pass with limits on generates the same cases as the
    one with limits off (derandomized), which would otherwise find every email taken."""
    if limits not in databases_per_pass:
        directory: Path = tmp_path_factory.mktemp(f"fuzz-limits-{limits}")
        found = {}
        for name, base in (("auth", AuthBase), ("member", MemberBase), ("batch", BatchBase)):
            database = Database.from_url(f"sqlite:///{directory / name}.db", base.metadata)
            create_tables(database)
            found[name] = database
        databases_per_pass[limits] = found
    return databases_per_pass[limits]


REDIS_URL = "redis://127.0.0.1:6379/0"
# The auth API's passes: limits off; on as in production, counted in this process; on in
# Redis, with the per-address limits out of the way so that every generated email reaches
# the per-email count (kinds a limiter does not know are ignored; those not named here
# keep their defaults).
LIMITS: dict[str, RateLimitSettings | None] = {
    "off": None,
    "memory": RateLimitSettings(switch="on"),
    "redis": RateLimitSettings(
        switch="on",
        redis_url=REDIS_URL,
        limits={
            "signup-per-address": "1000000/60",
            "login-per-address": "1000000/60",
            "signup-per-email": "2/3600",
            "login-per-email": "3/900",
        },
    ),
}
# Limits on, a pass tries this share of the cases of the pass with limits off: what the
# limiter adds is looked at on fewer cases, so the tier stays within about a minute.
SHARE = {"off": 1.0, "memory": 0.3, "redis": 0.3}


def examples(count: int, limits: str) -> int:
    return max(1, round(count * SHARE[limits]))


def with_limits(label: str, limits: str) -> str:
    return label if limits == "off" else f"{label}, limits {limits}"


@pytest.fixture
def limits() -> str:
    """Rate limits off, unless a test is parametrized with other LIMITS."""
    return "off"


@pytest.fixture
def apps(databases: dict[str, Database], limits: str) -> dict[str, Flask]:
    settings = LIMITS[limits]
    limiter = None
    if settings is not None:
        if settings.redis_url:
            try:
                redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1).ping()
            except redis.RedisError as exc:
                pytest.fail(f"no Redis at {settings.redis_url} ({exc}): scripts/ensure-redis.sh")
        # A secret of this test's own: its counts (in Redis, its keys) are no other run's.
        limiter = rate_limiter(settings, token_bytes(32))
        assert limiter is not None
    return {
        "auth": create_auth_app(
            databases["auth"], TokenIssuer("k" * 32), hasher=FAST_HASHER, limiter=limiter
        ),
        "member": create_member_app(databases["member"]),
        "batch": create_batch_app(databases["batch"]),
    }


def documented(app: Flask) -> dict[tuple[str, str], set[int]]:
    """(METHOD, path) -> the statuses the app's /openapi.json documents for it."""
    paths = app.test_client().get("/openapi.json").json["paths"]  # type: ignore[index]
    return {
        (method.upper(), path): {int(status) for status in operation["responses"]}
        for path, methods in paths.items()
        for method, operation in methods.items()
    }


def assert_limited_well(
    status: int, headers: Any, body: bytes, where: str, limits: str, statuses: set[int]
) -> None:
    """A 429 only with limits on, documented for the route, with a Retry-After in whole
    seconds (assert_well_formed has checked it is a JSON error)."""
    if status != 429:
        return
    assert limits != "off", f"{where}: 429 with the limits off"
    assert 429 in statuses, f"{where}: 429 is not in the OpenAPI document: {statuses}"
    retry = {name.lower(): value for name, value in headers.items()}.get("retry-after")
    retry = retry[0] if isinstance(retry, list) else retry
    assert retry and retry.isdigit() and int(retry) >= 1, f"{where}: Retry-After {retry!r}"
    assert json.loads(body)["error"] == "too_many_requests", where
    CASES[with_limits("429 answers (JSON, Retry-After, documented)", limits)] += 1


def stored(database: Database) -> tuple[int, int]:
    """(members, outbox rows) committed in the auth database."""
    with database.sessions() as session:
        members = session.scalar(select(func.count()).select_from(Member)) or 0
        events = session.scalar(select(func.count()).select_from(AuthOutbox)) or 0
    return members, events


def assert_security_headers(raw_headers: Any, where: str) -> dict[str, str]:
    """Every security header, with its value; the headers, by lower-case name."""
    headers = {  # werkzeug's headers, or schemathesis's {lower-case name: [values]}
        name.lower(): value[0] if isinstance(value, list) else value
        for name, value in raw_headers.items()
    }
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value, f"{where}: {name}"
    return headers


def assert_well_formed(
    status: int, raw_headers: Any, body: bytes, where: str, path: str | None = None
) -> None:
    assert status < 500, f"{where}: {status} {body[:300]!r}"
    headers = assert_security_headers(raw_headers, where)
    if (path or where).endswith("/metrics") or where.startswith("HEAD "):
        return  # Prometheus text; a HEAD answer has no body
    assert headers.get("content-type", "").startswith("application/json"), where
    try:
        document = json.loads(body)
    except ValueError:
        raise AssertionError(f"{where}: not JSON: {body[:200]!r}") from None
    if status >= 400:
        assert isinstance(document.get("error"), str) and document.get("message"), where
        assert "Traceback" not in body.decode("utf-8", "replace"), where


def operations(app: Flask) -> list[Any]:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize(
    ("service", "limits"),
    [("auth", "off"), ("member", "off"), ("batch", "off"), ("auth", "memory"), ("auth", "redis")],
)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_from_the_openapi_document_never_get_a_500(
    apps: dict[str, Flask],
    databases: dict[str, Database],
    service: str,
    mode: GenerationMode,
    limits: str,
) -> None:
    """schemathesis builds requests from each API's own /openapi.json: valid ones
    (positive) and ones that break the document on purpose (negative)."""
    statuses = documented(apps[service])
    for operation in operations(apps[service]):
        try:
            fuzz_operation(operation, mode, databases["auth"], limits, statuses)
        except hypothesis.errors.Unsatisfiable:
            # Nothing in this operation to get wrong (no body, no parameter).
            assert mode is GenerationMode.NEGATIVE, operation.label
    if service == "auth" and mode is GenerationMode.NEGATIVE:
        tried = {label: n for label, n in CASES.items() if label.startswith("openapi negative")}
        signups = tried.get(with_limits("openapi negative POST /auth/signup", limits), 0)
        assert signups > examples(100, limits), tried


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    auth_db: Database,
    limits: str,
    statuses: dict[tuple[str, str], set[int]],
) -> None:
    """Run one operation's generated cases."""
    label = operation.label
    documented_here = statuses[(operation.method.upper(), operation.path)]

    @hypothesis.settings(
        SETTINGS, max_examples=examples(EXAMPLES.get(label, OTHER_EXAMPLES), limits)
    )
    @hypothesis.given(operation.as_strategy(generation_mode=mode))
    def exercise(case: Any) -> None:
        CASES[with_limits(f"openapi {mode.value:8} {label}", limits)] += 1
        before = stored(auth_db) if label == "POST /auth/signup" else None
        response = case.call()
        assert_well_formed(response.status_code, response.headers, response.content, label)
        assert_limited_well(
            response.status_code,
            response.headers,
            response.content,
            label,
            limits,
            documented_here,
        )
        if before is not None:
            grew = 1 if response.status_code == 201 else 0
            # A rejected signup leaves no account and no event behind.
            assert stored(auth_db) == (before[0] + grew, before[1] + grew), label

    exercise()


def with_a_lone_surrogate(texts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`texts` with a lone surrogate put in: valid in JSON (`"\\ud800"`), decoded to a
    str that cannot be encoded as UTF-8 (as an HMAC of it, or a log line, would)."""
    return st.tuples(texts, st.characters(categories=["Cs"]), st.integers(0, 40)).map(
        lambda parts: parts[0][: parts[2]] + parts[1] + parts[0][parts[2] :]
    )


TEXTS = st.text() | with_a_lone_surrogate(st.text(max_size=20))
EMAILS = st.emails() | with_a_lone_surrogate(st.emails())
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXTS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXTS, inner, max_size=4),
    max_leaves=12,
)
SIGNUP_FIELDS = [
    "email",
    "password",
    "name",
    "phone",
    "birth",
    "gender",
    "role",
    "nickname",
    "favoriteStyles",
]


@st.composite
def raw_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Anything a client could send: any method, path, headers and body bytes."""
    path = draw(
        st.sampled_from(["/auth/signup", "/auth/login", "/auth/me", "/openapi.json"])
        | st.text(alphabet=string.printable, max_size=60).map(lambda p: "/" + p.lstrip("/"))
    )
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    body = draw(
        st.one_of(
            st.dictionaries(st.sampled_from(SIGNUP_FIELDS), JSON_VALUES, max_size=9).map(
                json.dumps
            ),
            JSON_VALUES.map(json.dumps),
            signups().map(json.dumps),
            st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        )
    )
    headers = draw(
        st.dictionaries(
            st.sampled_from(["Content-Type", "Authorization", "traceparent", "Accept", "X-Any"]),
            st.text(alphabet=string.printable.replace("\n", "").replace("\r", ""), max_size=80),
            max_size=4,
        )
    )
    headers.setdefault("Content-Type", draw(st.sampled_from(["application/json", "text/plain"])))
    return {
        "path": path,
        "method": method,
        "data": body.encode("utf-8", "surrogatepass"),
        "headers": headers,
    }


@pytest.mark.parametrize("limits", LIMITS)
def test_any_method_path_header_and_body_gets_an_answer_but_never_a_500(
    apps: dict[str, Flask], databases: dict[str, Database], limits: str
) -> None:
    client = apps["auth"].test_client()
    statuses = documented(apps["auth"])

    @hypothesis.settings(SETTINGS, max_examples=examples(1500, limits))
    @hypothesis.given(raw_requests())
    def exercise(sent: dict[str, Any]) -> None:
        CASES[with_limits("raw method/path/headers/body, auth API", limits)] += 1
        before = stored(databases["auth"])
        response = client.open(
            sent["path"], method=sent["method"], data=sent["data"], headers=sent["headers"]
        )
        where = f"{sent['method']} {sent['path']!r} {sent['headers']} -> {response.status_code}"
        if sent["method"] in ("HEAD", "OPTIONS") and response.status_code < 300:
            # Flask's automatic answers: no body (OPTIONS lists the methods in Allow).
            assert_security_headers(response.headers, where)
            assert response.data == b"" or sent["method"] == "HEAD"
            assert response.content_type.startswith("application/json")
            return
        assert_well_formed(
            response.status_code, response.headers, response.data, where, sent["path"]
        )
        here = statuses.get((sent["method"], sent["path"]), set())
        assert_limited_well(
            response.status_code, response.headers, response.data, where, limits, here
        )
        if response.status_code != 201:
            assert stored(databases["auth"]) == before

    exercise()


@st.composite
def signups(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies close to valid, so most get through validation and some do not."""
    return {
        "email": draw(EMAILS),
        "password": draw(st.text(min_size=6, max_size=40)),
        "name": draw(st.text(min_size=1, max_size=20)),
        "phone": draw(st.from_regex(r"\+?[0-9]{2,4}(-[0-9]{3,4}){1,2}", fullmatch=True)),
        "birth": draw(st.dates(max_value=__import__("datetime").date(2010, 1, 1))).isoformat(),
        "gender": draw(st.sampled_from(["MALE", "FEMALE", "OTHER"])),
        "role": draw(st.sampled_from(["USER", "PARTNER"])),
        "nickname": draw(st.text(min_size=2, max_size=12)),
        "favoriteStyles": draw(st.lists(st.integers(1, 50), max_size=5, unique=True)),
    }


# A password shorter than this is refused for its length, and may well be part of a word of
# the message that says so ("invali" is in "invalid"): only longer ones are searched for.
SHORTEST_SECRET = 8


def strings_in(document: Any) -> Iterator[str]:
    """Every string of a decoded JSON document: values and object keys, at any depth."""
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from strings_in(value)
    elif isinstance(document, list):
        for item in document:
            yield from strings_in(item)


Secrets = tuple[str, str, str]  # a signup's password, email and phone


def searched(secrets: Secrets) -> list[str]:
    """The secrets looked for: the email and phone in full, the password if long enough."""
    password, email, phone = secrets
    return [email, phone] + ([password] if len(password) >= SHORTEST_SECRET else [])


def holding(document: Any, secrets: Secrets) -> list[tuple[str, str]]:
    """(secret, string) for each string of the decoded JSON `document` holding a secret.
    Decoded, not raw: JSON may escape a value (`p\\u00e4ss`) so that the raw text does not
    contain it even though it leaked."""
    texts = sorted(set(strings_in(document)))
    return [(secret, text) for secret in searched(secrets) for text in texts if secret in text]


class ErrorBodies:
    """The error bodies answered to signups, to tell an echo of a secret from the API's own
    words. Hypothesis also draws strings from the project's own literals, so a generated
    password such as `validati` is part of `validation_failed`, in every error body: a
    string holding a secret is the API's own when the API gave it to another signup too,
    one whose secrets that string does not hold."""

    def __init__(self) -> None:
        self.answers: list[tuple[Secrets, Any]] = []

    def add(self, secrets: Secrets, raw: str) -> None:
        """Record one error body (raw JSON text) answered to a signup with `secrets`."""
        self.answers.append((secrets, json.loads(raw)))

    def leaks(self) -> list[str]:
        """Each secret found in an error body in a string the API gave no other signup."""
        said_to: dict[str, list[Secrets]] = {}
        for secrets, document in self.answers:
            for text in set(strings_in(document)):
                said_to.setdefault(text, []).append(secrets)
        return [
            f"{secret!r} in {text!r} of {document}"
            for secrets, document in self.answers
            for secret, text in holding(document, secrets)
            if not any(not any(other in text for other in searched(them)) for them in said_to[text])
        ]


# One signup per password rule, so that each rule's message is known as the API's own even
# if no generated signup other than the one whose password is in it breaks that rule.
RULE_BREAKERS = [
    {"password": "qwertyuiop"},  # common
    {"email": "walrus.keeper@example.com", "password": "walrus.keeper@example.com"},
    {"email": "walrus.keeper@example.com", "password": "walrus.keeper"},
    {"nickname": "walrus keeper", "password": "walrus keeper"},
]


def leaks_in(bodies: list[tuple[dict[str, Any], str]]) -> list[str]:
    """The leaks `ErrorBodies` finds among (signup, error body) pairs."""
    errors = ErrorBodies()
    for body, raw in bodies:
        errors.add((body["password"], body["email"], body["phone"]), raw)
    return errors.leaks()


def leaks_in_events(events: list[tuple[Secrets, str]]) -> list[str]:
    """Each secret found in a value of an event (its names are checked to be the four of
    the contract, so they hold nothing)."""
    return [
        f"{secret!r} in {text!r} of {payload}"
        for secrets, payload in events
        for secret, text in holding(list(json.loads(payload).values()), secrets)
    ]


SIGNUP = {"email": "someone@example.com", "password": "long enough", "phone": "010-1234-5678"}
MESSAGE = {"error": "validation_failed", "message": "The request has invalid fields."}


def error_body(**fields: list[str]) -> str:
    """An error body as the API sends it: non-ASCII escaped."""
    return json.dumps({**MESSAGE, "fields": fields})


@pytest.mark.parametrize(
    ("bodies", "found"),
    [
        # jsonify escapes non-ASCII: the raw text does not hold the password, the value does.
        ([(dict(SIGNUP, password="pässwörd123"), error_body(password=["pässwörd123?"]))], 1),
        ([(dict(SIGNUP, password="pässwörd123"), error_body(pässwörd123=["x"]))], 1),
        ([(dict(SIGNUP, email="ä@b.co"), error_body(email=["Taken: ä@b.co"]))], 1),
        ([(dict(SIGNUP, phone="1-2"), error_body(phone=["1-2 is not a phone"]))], 1),
        # The same echo for two signups with the same password is still two echoes.
        ([(dict(SIGNUP, password="hunter2hunter2"), error_body(p=["hunter2hunter2"]))] * 2, 2),
        # A refused short password inside a word of the message is not a leak...
        ([(dict(SIGNUP, password="invali"), error_body(password=["Too short."]))], 0),
        # ... nor a long one inside a word the API says to other signups too.
        (
            [
                (dict(SIGNUP, password="validati"), error_body(phone=["Too short."])),
                (dict(SIGNUP, password="other one"), error_body(phone=["Too short."])),
            ],
            0,
        ),
        ([(dict(SIGNUP, password="validati"), error_body(phone=["Too short."]))], 1),
    ],
)
def test_the_leak_check_reads_decoded_strings_and_tells_echoes_from_the_apis_own_words(
    bodies: list[tuple[dict[str, Any], str]], found: int
) -> None:
    assert len(leaks_in(bodies)) == found, leaks_in(bodies)


def test_the_leak_check_reads_the_decoded_values_of_an_event() -> None:
    secrets = ("pässwörd123", "someone@example.com", "010-1234-5678")
    event = json.dumps({"uuid": "u", "role": "USER", "nickname": "pässwörd123", "x": []})

    assert len(leaks_in_events([(secrets, event)])) == 1
    assert leaks_in_events([(("nickname", *secrets[1:]), event)]) == []


@pytest.mark.parametrize("limits", LIMITS)
def test_no_password_email_or_phone_reaches_an_event_or_an_error_body(
    apps: dict[str, Flask], databases: dict[str, Database], limits: str
) -> None:
    client = apps["auth"].test_client()
    statuses = documented(apps["auth"])[("POST", "/auth/signup")]
    accepted: list[tuple[str, Secrets]] = []
    errors = ErrorBodies()

    def send(body: dict[str, Any]) -> int:
        response = client.post("/auth/signup", json=body)
        assert response.status_code < 500, response.get_data(as_text=True)
        assert_limited_well(
            response.status_code, response.headers, response.data, "signup", limits, statuses
        )
        secrets = (body["password"], body["email"], body["phone"])
        if response.status_code == 201:
            accepted.append((response.json["uuid"], secrets))  # type: ignore[index]
        else:
            errors.add(secrets, response.get_data(as_text=True))
        return response.status_code

    for rule_breaker in RULE_BREAKERS:
        assert send(signup_body(**rule_breaker)) == 400, rule_breaker

    @hypothesis.settings(SETTINGS, max_examples=examples(400, limits))
    @hypothesis.given(signups())
    def exercise(body: dict[str, Any]) -> None:
        CASES[with_limits("signups checked for personal data", limits)] += 1
        send(body)

    exercise()
    # Under the production limits (memory) the one test address is refused after 20
    # signups a minute, with the rule breakers among them: the error bodies are checked,
    # the events maybe not.
    assert accepted or limits == "memory", "no generated signup was accepted: never checked"
    assert not errors.leaks(), "error bodies repeat personal data:\n" + "\n".join(errors.leaks())
    with databases["auth"].sessions() as session:
        events = {
            key: payload
            for key, payload in session.execute(select(AuthOutbox.key, AuthOutbox.payload))
        }
    for member_id, _ in accepted:
        assert set(json.loads(events[member_id])) == {"uuid", "role", "nickname", "favoriteStyles"}
    found = leaks_in_events([(secrets, events[member_id]) for member_id, secrets in accepted])
    assert not found, "events carry personal data:\n" + "\n".join(found)
