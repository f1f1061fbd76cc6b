"""The gRPC front's pure decisions: status mapping, error shape, request validation, metadata."""

from __future__ import annotations

import grpc
import pytest

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy.config import MAX_BODY_BYTES
from proxy.downstream.grpc import (
    ERROR_CODE_KEY,
    MESSAGE_LIMIT,
    Failure,
    deadline_failure,
    failure_from_error,
    failure_from_reply,
    invocation_for,
    passed_metadata,
)
from proxy.errors import BodyTooLarge, EndpointNotFound, InvalidRequest, NoCredential, Overloaded, UpstreamTimeout
from proxy.forwarding import default_headers

# The issue's table, verbatim.
ISSUE_TABLE = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.mark.parametrize(("status", "code"), ISSUE_TABLE.items())
def test_http_status_maps_to_grpc_code(status: int, code: grpc.StatusCode) -> None:
    assert Failure(status, "m").code == code


@pytest.mark.parametrize(("status", "code"), [(409, "ABORTED"), (422, "FAILED_PRECONDITION"), (505, "UNKNOWN")])
def test_statuses_outside_the_table(status: int, code: str) -> None:
    assert Failure(status, "m").code == grpc.StatusCode[code]


def test_upstream_databricks_error_gives_message_and_error_code() -> None:
    body = b'{"error_code": "BAD_REQUEST", "message": "Invalid JSON in request body"}'
    failure = failure_from_reply(400, body, retry_after=None)
    assert failure == Failure(400, "Invalid JSON in request body", "BAD_REQUEST")
    assert failure.trailing_metadata("rid-1") == (
        (ERROR_CODE_KEY, "BAD_REQUEST"),
        ("http-status", "400"),
        ("x-request-id", "rid-1"),
    )


def test_upstream_error_that_is_not_json_keeps_its_text() -> None:
    failure = failure_from_reply(502, b"  <html>Bad Gateway</html>\n", retry_after="3")
    assert failure == Failure(502, "<html>Bad Gateway</html>", None, "3")
    assert dict(failure.trailing_metadata(None)) == {"http-status": "502", "retry-after": "3"}


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'{"message": 7}', b"\xff\xfe"])
def test_odd_error_bodies_still_give_a_message(body: bytes) -> None:
    failure = failure_from_reply(500, body)
    assert failure.message
    assert failure.error_code is None


def test_long_text_errors_are_cut() -> None:
    assert len(failure_from_reply(500, b"x" * 100_000).message) <= 2048


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (EndpointNotFound("no endpoint"), grpc.StatusCode.NOT_FOUND),
        (InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (BodyTooLarge("big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UpstreamTimeout("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (NoCredential("no token", retry_after=2), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("too many in flight", retry_after=1), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_sidecar_errors_map_the_same_way(error: InvalidRequest, code: grpc.StatusCode) -> None:
    failure = failure_from_error(error)
    assert failure.code == code
    assert failure.message == error.message
    assert dict(failure.trailing_metadata(None))[ERROR_CODE_KEY] == error.error_code


def test_retry_after_of_a_sidecar_error_is_kept() -> None:
    failure = failure_from_error(NoCredential("no token", retry_after=2))
    assert dict(failure.trailing_metadata(None))["retry-after"] == "2"


def test_deadline_failure() -> None:
    failure = deadline_failure(1.0)
    assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "1 s" in failure.message


def test_request_becomes_the_same_invocation_as_http() -> None:
    request = pb.InvokeRequest(endpoint="fraud-ro", served_model="fraud-ro-1", json_body=b'{"a": 1}')
    call = invocation_for(request, [("x-request-id", "abc")])
    assert (call.endpoint, call.served_model, call.body) == ("fraud-ro", "fraud-ro-1", b'{"a": 1}')
    assert (call.request_id, call.headers) == ("abc", default_headers(False, False))
    assert invocation_for(pb.InvokeRequest(endpoint="fraud-ro"), []).served_model is None


@pytest.mark.parametrize(
    ("endpoint", "served_model", "field"),
    [
        ("", "", "endpoint is required"),
        ("../api/2.0", "", "endpoint"),
        ("a" * 65, "", "endpoint"),
        ("fraud-ro", "x/../y", "served_model"),
    ],
)
def test_bad_names_are_invalid_arguments(endpoint: str, served_model: str, field: str) -> None:
    with pytest.raises(InvalidRequest, match=field) as caught:
        invocation_for(pb.InvokeRequest(endpoint=endpoint, served_model=served_model), [])
    assert failure_from_error(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT


def test_only_the_request_id_is_passed_upstream() -> None:
    metadata = [
        ("authorization", "Bearer someone-elses-token"),
        ("X-Request-Id", "r-1"),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-python"),
        ("trace-bin", b"\x00"),
    ]
    assert passed_metadata(metadata) == [("x-request-id", "r-1")]


def test_message_limit_leaves_room_for_framing_only() -> None:
    assert MAX_BODY_BYTES < MESSAGE_LIMIT <= MAX_BODY_BYTES + 1024 * 1024
