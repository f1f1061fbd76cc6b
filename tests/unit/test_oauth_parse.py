import base64
import json

import pytest

from proxy.credentials.oauth import MAX_EXPIRES_IN, MAX_TOKEN_CHARS, parse_token_response
from proxy.errors import TokenError
from proxy.logs import Redactor


def test_success_measures_lifetime_from_send_time() -> None:
    token = parse_token_response(200, b'{"access_token":"SECRETTOKEN","token_type":"Bearer","expires_in":600}', 100.0)
    assert (token.access_token, token.obtained_at, token.expires_at) == ("SECRETTOKEN", 100.0, 700.0)
    assert "SECRETTOKEN" not in repr(token)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, b'{"error":"invalid_client","error_description":"Client authentication failed"}', "invalid_client"),
        (400, b'{"errorCode":"invalid_request","errorSummary":"x"}', "invalid_request"),
        (503, b"<html>busy</html>", "invalid_response"),
        (200, b'{"token_type":"Bearer"}', "invalid_response"),
        (500, b"{}", "http_500"),
    ],
)
def test_errors_name_the_oauth_error(status: int, body: bytes, error: str) -> None:
    with pytest.raises(TokenError) as exc:
        parse_token_response(status, body, 0.0)
    assert exc.value.error == error


# --- hostile answers: validated at the edge, never a `Bearer None` -----------------------------------


def answer(access_token: object = "tok.en-1_~+/==", expires_in: object = 3600) -> bytes:
    return json.dumps({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}).encode()


@pytest.mark.parametrize(
    ("access_token", "problem"),
    [
        (None, "access_token is null, not a string"),
        ({"value": "x"}, "access_token is an object, not a string"),
        (["x"], "access_token is an array, not a string"),
        (12345, "access_token is a number, not a string"),
        (True, "access_token is a boolean, not a string"),
        ("", "access_token is empty"),
        ("abc\r\nX-Injected: 1", "characters a bearer token cannot have"),
        ("abc def", "characters a bearer token cannot have"),
        ("abc=def", "characters a bearer token cannot have"),
        ("é", "characters a bearer token cannot have"),
        ("x" * (MAX_TOKEN_CHARS + 1), f"at most {MAX_TOKEN_CHARS}"),
    ],
)
def test_an_access_token_that_is_not_a_bearer_token_is_refused(access_token: object, problem: str) -> None:
    with pytest.raises(TokenError) as exc:
        parse_token_response(200, answer(access_token=access_token), 0.0)
    assert exc.value.error == "invalid_response" and problem in exc.value.description
    assert "None" not in exc.value.description and "Injected" not in str(exc.value)


@pytest.mark.parametrize("expires_in", [None, True, "soon", -5, 0, float("nan"), "nan", "inf", float("inf"), {}])
def test_expires_in_must_be_a_finite_positive_number(expires_in: object) -> None:
    with pytest.raises(TokenError) as exc:
        parse_token_response(200, answer(expires_in=expires_in), 0.0)
    assert exc.value.error == "invalid_response"
    assert "expires_in" in exc.value.description and "not a finite positive number" in exc.value.description


@pytest.mark.parametrize("expires_in", [1, 10, 39.9, 40, "40"])
def test_a_token_unusable_on_arrival_is_an_error(expires_in: object) -> None:
    with pytest.raises(TokenError) as exc:
        parse_token_response(200, answer(expires_in=expires_in), 100.0)
    assert exc.value.error == "unusable_token"
    assert "unusable on arrival" in exc.value.description and "40 s" in exc.value.description
    assert not exc.value.is_configuration_error  # backed off like any failure, never in a hot loop


@pytest.mark.parametrize(("expires_in", "lifetime"), [(41, 41.0), ("600", 600.0), (600.5, 600.5)])
def test_usable_lifetimes_are_honoured(expires_in: object, lifetime: float) -> None:
    assert parse_token_response(200, answer(expires_in=expires_in), 100.0).expires_at == 100.0 + lifetime


@pytest.mark.parametrize("expires_in", [1e300, 10**400, "1e300", MAX_EXPIRES_IN + 1])
def test_a_huge_lifetime_is_clamped_to_a_day(expires_in: object) -> None:
    payload = answer(expires_in=expires_in) if expires_in != 10**400 else answer().replace(b"3600", b"1" * 401)
    token = parse_token_response(200, payload, 100.0)
    assert token.expires_at == 100.0 + MAX_EXPIRES_IN


def test_nan_written_by_a_lenient_json_encoder_is_refused() -> None:
    with pytest.raises(TokenError, match="expires_in NaN"):
        parse_token_response(200, b'{"access_token": "t", "expires_in": NaN}', 0.0)


# --- error texts: cut and redacted before anyone sees them -----------------------------------------


def test_a_5_mb_error_description_is_cut_and_an_echoed_basic_value_redacted() -> None:
    basic = base64.b64encode(b"sp-id:the-client-secret-42").decode()
    description = f"bad client: got Authorization: Basic {basic} and raw the-client-secret-42 " + "x" * 5_000_000
    payload = json.dumps({"error": "invalid_client", "error_description": description}).encode()
    with pytest.raises(TokenError) as exc:
        parse_token_response(401, payload, 0.0, redact=Redactor(["the-client-secret-42"]))
    text = str(exc.value)
    assert len(text) < 500 and "characters, cut" in text
    assert basic not in text and "the-client-secret-42" not in text and "Basic [REDACTED]" in text
    assert exc.value.error == "invalid_client" and exc.value.is_configuration_error


def test_control_characters_in_error_texts_become_spaces() -> None:
    payload = json.dumps({"error": "invalid_grant", "error_description": "line1\r\nFAKE LOG LINE\x1b[31m"}).encode()
    with pytest.raises(TokenError) as exc:
        parse_token_response(400, payload, 0.0)
    assert "\n" not in str(exc.value) and "\r" not in str(exc.value) and "\x1b" not in str(exc.value)


@pytest.mark.parametrize("code", ["x" * 65, "bad\ncode", {"nested": 1}, 42, ""])
def test_an_error_code_that_is_not_an_oauth_error_string_is_replaced(code: object) -> None:
    payload = json.dumps({"error": code, "error_description": "d"}).encode()
    with pytest.raises(TokenError) as exc:
        parse_token_response(400, payload, 0.0)
    assert exc.value.error == "http_400"


def test_a_non_string_description_is_shown_as_json_bounded() -> None:
    payload = json.dumps({"error": "invalid_request", "error_description": {"k": "v" * 10_000}}).encode()
    with pytest.raises(TokenError) as exc:
        parse_token_response(400, payload, 0.0)
    assert exc.value.description.startswith('{"k": "vvv') and len(exc.value.description) < 400


def test_deeply_nested_json_is_an_invalid_response() -> None:
    with pytest.raises(TokenError) as exc:
        parse_token_response(200, b"[" * 100_000 + b"]" * 100_000, 0.0)
    assert exc.value.error == "invalid_response"
