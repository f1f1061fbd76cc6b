"""Log formatting, request ids and redaction: pure, no sockets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from proxy import logs

JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzcC0xIiwiZXhwIjoxfQ.c2lnbmF0dXJlLWJ5dGVz"
SECRET = "dose-super-secret-value-42"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing through a sidecar handler into a buffer; switch format with `use`."""
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers.clear()


def use(logger: logging.Logger, stream: io.StringIO, fmt: str) -> None:
    logger.handlers.clear()
    logger.addHandler(logs.build_handler(fmt, secrets=[SECRET], stream=stream))


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("abc-123", True),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("trace:span/1+x=", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("has space", False),
        ("new\nline", False),
        ('quote"', False),
        ("caf\u00e9", False),
        (None, False),
    ],
)
def test_request_id_is_honoured_only_when_short_and_safe(header: str | None, kept: bool) -> None:
    value = logs.request_id_from(header)
    assert (value == header) is kept
    if not kept:
        assert len(value) == 32 and value.isalnum()


def test_generated_request_ids_differ() -> None:
    assert logs.request_id_from(None) != logs.request_id_from(None)


def test_bound_request_id_is_restored_after_the_block() -> None:
    assert logs.request_id() is None
    with logs.bound_request_id("outer"):
        with logs.bound_request_id("inner"):
            assert logs.request_id() == "inner"
        assert logs.request_id() == "outer"
    assert logs.request_id() is None


async def test_request_ids_do_not_leak_between_concurrent_tasks() -> None:
    async def serve(rid: str) -> str | None:
        with logs.bound_request_id(rid):
            await asyncio.sleep(0.01)
            return logs.request_id()

    assert await asyncio.gather(serve("a"), serve("b")) == ["a", "b"]


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {JWT}",
        "authorization=bearer dapi0123456789abcdef",
        f"sent {JWT} upstream",
        JWT[:40],  # a truncated token is still caught
        'body {"access_token": "opaque-token-value-123", "expires_in": 3600}',
        "grant_type=client_credentials&client_secret=abcdefgh12345&scope=all-apis",
        "assertion=xyz123456789&authorization_details=[]",
        "subject_token=abc.def.ghi",
        f"the secret is {SECRET}.",
    ],
)
def test_redactor_removes_credentials(text: str) -> None:
    redacted = logs.Redactor([SECRET])(text)
    assert logs.REDACTED in redacted
    for needle in (JWT[:20], "dapi0123", "opaque-token", "abcdefgh", "xyz1234", "abc.def", SECRET):
        assert needle not in redacted, redacted


@pytest.mark.parametrize(
    "text",
    [
        "jwt-bearer exchange for fraud-ro",
        "no usable workspace token: token server said invalid_client",
        "GET https://ws.example.com/oidc/v1/token 200",
        "token_url=https://ws/oidc/v1/token kind=data_plane",
        "listening listener=http address=127.0.0.1:8484",
    ],
)
def test_redactor_leaves_ordinary_text_alone(text: str) -> None:
    assert logs.Redactor([SECRET, "short"])(text) == text


def test_text_lines_carry_request_id_and_extras(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    use(logger, stream, "text")
    with logs.bound_request_id("rid-1"):
        logger.info("forwarded %s", "fraud-ro", extra={"status": 200, "note": "two words"})
    logger.info("outside")
    first, second = stream.getvalue().splitlines()
    assert " INFO tests.logs forwarded fraud-ro " in first
    assert first.endswith('status=200 note="two words" request_id=rid-1')
    assert "request_id" not in second


def test_json_lines_are_objects_with_request_id(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    use(logger, stream, "json")
    with logs.bound_request_id("rid-2"):
        logger.warning("upstream said %s", 503, extra={"endpoint": "fraud-ro"})
    doc = json.loads(stream.getvalue())
    assert doc["level"] == "warning"
    assert doc["logger"] == "tests.logs"
    assert doc["message"] == "upstream said 503"
    assert doc["request_id"] == "rid-2"
    assert doc["endpoint"] == "fraud-ro"
    assert doc["time"].endswith("Z")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_formatters_redact_messages_extras_and_tracebacks(
    captured: tuple[logging.Logger, io.StringIO], fmt: str
) -> None:
    logger, stream = captured
    use(logger, stream, fmt)
    logger.debug("headers %s", {"Authorization": f"Bearer {JWT}"}, extra={"body": f'{{"access_token": "{JWT}"}}'})
    try:
        raise ValueError(f"client_secret={SECRET}")
    except ValueError:
        logger.exception("token request failed")
    output = stream.getvalue()
    assert JWT[:12] not in output and SECRET not in output and "eyJ" not in output
    assert output.count(logs.REDACTED) >= 3
    if fmt == "json":
        for line in output.splitlines():
            if line.startswith("{"):
                json.loads(line)


def test_access_record_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    _, stream = captured
    access = logging.getLogger(logs.ACCESS_LOGGER)
    handler = logs.build_handler("json", stream=stream)
    access.addHandler(handler)
    previous = access.level
    access.setLevel(logging.INFO)
    try:
        with logs.bound_request_id("rid-3"):
            logs.log_access(logs.AccessRecord("http", "POST", "/serving-endpoints/x/invocations", "x", 200, 0.0125))
    finally:
        access.removeHandler(handler)
        access.setLevel(previous)
    doc = json.loads(stream.getvalue().splitlines()[0])
    assert doc["message"] == "POST /serving-endpoints/x/invocations 200 12.5 ms"
    assert (doc["front"], doc["endpoint"], doc["status"], doc["request_id"]) == ("http", "x", 200, "rid-3")


def test_access_path_drops_query_and_bounds_length() -> None:
    assert logs.access_path("/serving-endpoints/a/invocations?token=x") == "/serving-endpoints/a/invocations"
    assert len(logs.access_path("/" + "a" * 1000)) == 200


def test_untrusted_text_is_short_one_line_and_redacted() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzcCJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
    text = f"bad request\r\nBearer abcdefgh12345678 {jwt} client_secret=hunter22hunter22 " + "z" * 5_000_000
    shown = logs.untrusted_text(text)
    assert len(shown) < logs.UNTRUSTED_TEXT_LIMIT + 50 and shown.endswith(f"({len(text)} characters, cut)")
    assert "\n" not in shown and "\r" not in shown
    for secret in ("abcdefgh12345678", jwt, "hunter22hunter22"):
        assert secret not in shown


def test_untrusted_text_redacts_a_credential_that_straddles_the_cut() -> None:
    basic = "QWxhZGRpbjpvcGVuIHNlc2FtZQ" * 20  # a long Basic value starting just before the limit
    text = "x" * (logs.UNTRUSTED_TEXT_LIMIT - 20) + f" Basic {basic}"
    shown = logs.untrusted_text(text)
    assert "QWxhZGRp" not in shown and "Basic [REDACTED]" in shown


def test_untrusted_text_keeps_short_text_as_is() -> None:
    assert logs.untrusted_text("Client authentication failed") == "Client authentication failed"


def test_secrets_added_later_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logs.add_secrets(["rotated-secret-value"])
    logger.warning("oops rotated-secret-value")
    assert "rotated-secret-value" not in stream.getvalue()
