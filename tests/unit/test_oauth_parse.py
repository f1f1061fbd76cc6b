import pytest

from proxy.credentials.oauth import parse_token_response
from proxy.errors import TokenError


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
