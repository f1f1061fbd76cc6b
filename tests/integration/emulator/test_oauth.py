"""The token endpoint: three grants, client authentication, OAuth-shaped errors."""

from __future__ import annotations

import json

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.emulator import Emulator

from .conftest import JWT_BEARER, basic, bearer, invoke, post_token, workspace_token

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def claims(token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_discovery_documents_name_the_token_endpoint(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    for path in ("/oidc/.well-known/oauth-authorization-server", "/oidc/.well-known/openid-configuration"):
        async with client.get(emulator.workspace_url + path) as resp:
            body = await resp.json()
        assert body["token_endpoint"] == emulator.token_endpoint
        assert body["authorization_endpoint"] == emulator.workspace_url + "/oidc/v1/authorize"


async def test_client_credentials_with_basic_auth_gives_a_workspace_jwt(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    status, body = await post_token(
        client,
        emulator,
        {"grant_type": "client_credentials", "scope": "all-apis"},
        basic(emulator.client_id, emulator.client_secret),
    )
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "all-apis"
    decoded = claims(body["access_token"])
    assert decoded["sub"] == emulator.client_id
    assert decoded["kind"] == "workspace"
    assert {"iss", "iat", "exp", "jti"} <= set(decoded)
    assert "authorization_details" not in decoded


async def test_client_credentials_with_form_secret_and_default_scope(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    status, body = await post_token(
        client,
        emulator,
        {
            "grant_type": "client_credentials",
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
        },
    )
    assert status == 200
    assert body["scope"] == "all-apis"


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({"grant_type": "client_credentials"}, {"Authorization": "Basic c2lkZWNhci1zcDp3cm9uZw=="}),
        ({"grant_type": "client_credentials", "client_id": "sidecar-sp", "client_secret": "wrong"}, None),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "emulated-secret"},
            None,
        ),
        ({"grant_type": "client_credentials"}, None),
        ({"grant_type": "client_credentials"}, {"Authorization": "Basic !!notbase64"}),
    ],
)
async def test_bad_client_authentication_is_invalid_client(
    emulator: Emulator, client: aiohttp.ClientSession, form: dict[str, str], headers: dict[str, str] | None
) -> None:
    async with client.post(emulator.token_endpoint, data=form, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["Content-Type"].startswith("application/json")
        assert await resp.json() == {
            "error": "invalid_client",
            "error_description": "Client authentication failed",
        }
    assert emulator.counters.snapshot()["token_failures"] == {"invalid_client": 1}


async def test_basic_auth_values_may_be_form_urlencoded(client: aiohttp.ClientSession) -> None:
    from proxy.emulator import EmulatorSettings

    async with Emulator(EmulatorSettings(clients={"sp:1": "s%e/cret"})) as emu:
        encoded = basic("sp%3A1", "s%25e%2Fcret")
        connector = aiohttp.TCPConnector(ssl=emu.client_ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            status, _ = await post_token(session, emu, {"grant_type": "client_credentials"}, encoded)
            raw_status, _ = await post_token(session, emu, {"grant_type": "client_credentials"}, basic("sp", "x"))
    assert status == 200
    assert raw_status == 401


@pytest.mark.parametrize(
    ("form", "error", "fragment"),
    [
        ({}, "invalid_request", "grant_type"),
        ({"grant_type": "password"}, "unsupported_grant_type", "password"),
        ({"grant_type": JWT_BEARER, "authorization_details": "[]"}, "invalid_request", "assertion"),
        ({"grant_type": JWT_BEARER, "assertion": "x"}, "invalid_request", "authorization_details"),
        ({"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE}, "invalid_request", "subject_token"),
        ({"grant_type": TOKEN_EXCHANGE, "subject_token": "x"}, "invalid_request", "subject_token_type"),
        (
            {"grant_type": TOKEN_EXCHANGE, "subject_token": "x", "subject_token_type": "urn:other"},
            "invalid_request",
            "subject_token_type",
        ),
    ],
)
async def test_missing_or_unknown_parameters(
    emulator: Emulator, client: aiohttp.ClientSession, form: dict[str, str], error: str, fragment: str
) -> None:
    status, body = await post_token(client, emulator, form)
    assert status == 400
    assert body["error"] == error
    assert fragment in body["error_description"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (json.dumps({"grant_type": "client_credentials"}), "application/json"),
        ("grant_type=client_credentials", "text/plain"),
        (b"grant_type=\xff\xfe", "application/x-www-form-urlencoded"),
        ("grant_type=client_credentials&grant_type=client_credentials", "application/x-www-form-urlencoded"),
        ("x" * 70_000, "application/x-www-form-urlencoded"),
    ],
)
async def test_malformed_requests_are_invalid_request(
    emulator: Emulator, client: aiohttp.ClientSession, data: str | bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type, **basic(emulator.client_id, emulator.client_secret)}
    async with client.post(emulator.token_endpoint, data=data, headers=headers) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"] == "invalid_request"


async def test_get_on_the_token_endpoint_is_an_oauth_error(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    async with client.get(emulator.token_endpoint) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"] == "invalid_request"


async def test_unknown_oidc_path_is_json(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    async with client.get(emulator.workspace_url + "/oidc/v1/nothing") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"] == "invalid_request"


async def test_client_credentials_with_authorization_details_gives_a_data_plane_token(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    details = emulator.authorization_details("fraud-ro")
    status, body = await post_token(
        client,
        emulator,
        {"grant_type": "client_credentials", "scope": "all-apis", "authorization_details": details},
        basic(emulator.client_id, emulator.client_secret),
    )
    assert status == 200
    assert body["authorization_details"] == json.loads(details)
    decoded = claims(body["access_token"])
    assert decoded["kind"] == "data_plane"
    assert decoded["authorization_details"] == json.loads(details)
    code, answer, _ = await invoke(client, emulator.endpoint_url("fraud-ro"), body["access_token"], {"inputs": [1, 2]})
    assert (code, answer) == (200, {"predictions": [1, 2]})
    assert emulator.counters.snapshot()["tokens_issued"] == {"workspace": 0, "data_plane": 1}


@pytest.mark.parametrize(
    ("details", "fragment"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON array"),
        ('{"type": "workspace_permission"}', "non-empty JSON array"),
        ('[{"type": "other"}]', "Unsupported"),
        (
            '[{"type":"workspace_permission","object_type":"serving-endpoints",'
            '"object_path":"/serving-endpoints/0000","actions":["query_inference_endpoint"]}]',
            "not authorized",
        ),
        (
            '[{"type":"workspace_permission","object_type":"serving-endpoints",'
            '"object_path":"/serving-endpoints/0000","actions":["drop_tables"]}]',
            "actions",
        ),
    ],
)
async def test_bad_authorization_details(
    emulator: Emulator, client: aiohttp.ClientSession, details: str, fragment: str
) -> None:
    status, body = await post_token(
        client,
        emulator,
        {"grant_type": "client_credentials", "authorization_details": details},
        basic(emulator.client_id, emulator.client_secret),
    )
    assert status == 400
    assert body["error"] == "invalid_authorization_details"
    assert fragment in body["error_description"]


async def test_client_without_can_query_is_refused_details() -> None:
    from proxy.emulator import EmulatorSettings, EndpointSpec

    settings = EmulatorSettings(
        clients={"a": "1", "b": "2"}, endpoints=[EndpointSpec("only-a", "custom", allowed_clients=("a",))]
    )
    async with Emulator(settings) as emu:
        connector = aiohttp.TCPConnector(ssl=emu.client_ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            form = {
                "grant_type": "client_credentials",
                "authorization_details": emu.authorization_details("only-a"),
            }
            ok, _ = await post_token(session, emu, form, basic("a", "1"))
            refused, body = await post_token(session, emu, form, basic("b", "2"))
    assert ok == 200
    assert refused == 400
    assert body == {
        "error": "invalid_authorization_details",
        "error_description": "User is not authorized to the requested authorizations",
    }


@pytest.mark.parametrize("with_header", [False, True])
async def test_jwt_bearer_exchange_with_or_without_authorization_header(
    emulator: Emulator, client: aiohttp.ClientSession, with_header: bool
) -> None:
    cp = await workspace_token(client, emulator)
    form = {
        "grant_type": JWT_BEARER,
        "assertion": cp,
        "authorization_details": emulator.authorization_details("chat-ro"),
    }
    status, body = await post_token(client, emulator, form, bearer(cp) if with_header else None)
    assert status == 200
    assert claims(body["access_token"])["kind"] == "data_plane"
    assert claims(body["access_token"])["sub"] == emulator.client_id
    assert emulator.counters.snapshot()["token_grants"]["jwt_bearer"] == 1


async def test_jwt_bearer_refuses_bad_assertions(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    details = emulator.authorization_details("fraud-ro")
    cp = await workspace_token(client, emulator)
    forged = jwt.encode({"sub": "x", "exp": 9e9, "jti": "1"}, "k" * 32, algorithm="HS256")
    dp_form = {"grant_type": JWT_BEARER, "assertion": cp, "authorization_details": details}
    _, dp = await post_token(client, emulator, dp_form)
    reasons = []
    for assertion in ("not-a-jwt", forged, dp["access_token"]):
        status, body = await post_token(
            client,
            emulator,
            {"grant_type": JWT_BEARER, "assertion": assertion, "authorization_details": details},
        )
        assert (status, body["error"]) == (400, "invalid_grant")
        reasons.append(body["error_description"])
    assert "data-plane" in reasons[2]


async def test_jwt_bearer_refuses_expired_and_revoked_assertions(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    details = emulator.authorization_details("fraud-ro")
    emulator.faults.cp_token_ttl = 0
    expired = await workspace_token(client, emulator)
    _, body = await post_token(
        client, emulator, {"grant_type": JWT_BEARER, "assertion": expired, "authorization_details": details}
    )
    assert body == {"error": "invalid_grant", "error_description": "Invalid assertion: token expired"}
    emulator.faults.cp_token_ttl = 3600
    live = await workspace_token(client, emulator)
    emulator.revoke_all_tokens()
    _, body = await post_token(
        client, emulator, {"grant_type": JWT_BEARER, "assertion": live, "authorization_details": details}
    )
    assert body["error_description"] == "Invalid assertion: token has been revoked"


async def _exchange(
    client: aiohttp.ClientSession, emu: Emulator, subject_token: str, **extra: str
) -> tuple[int, dict[str, object]]:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": JWT_TYPE,
        "scope": "all-apis",
        "client_id": emu.client_id,
        **extra,
    }
    return await post_token(client, emu, form)


async def test_token_exchange_then_jwt_bearer_reaches_the_data_plane(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    status, body = await _exchange(client, emulator, emulator.issue_workload_token())
    assert status == 200, body
    cp = str(body["access_token"])
    assert claims(cp)["kind"] == "workspace"
    assert claims(cp)["sub"] == emulator.client_id
    form = {
        "grant_type": JWT_BEARER,
        "assertion": cp,
        "authorization_details": emulator.authorization_details("fraud-ro"),
    }
    _, dp = await post_token(client, emulator, form)
    code, answer, _ = await invoke(
        client, emulator.endpoint_url("fraud-ro"), dp["access_token"], {"instances": [[1, 2]]}
    )
    assert (code, answer) == (200, {"predictions": [3]})
    grants = emulator.counters.snapshot()["token_grants"]
    assert grants == {"client_credentials": 0, "jwt_bearer": 1, "token_exchange": 1}


async def test_token_exchange_can_mint_a_data_plane_token_directly(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    details = emulator.authorization_details("fraud-ro")
    status, body = await _exchange(client, emulator, emulator.issue_workload_token(), authorization_details=details)
    assert status == 200
    assert claims(str(body["access_token"]))["kind"] == "data_plane"


async def test_token_exchange_without_client_id_matches_any_policy(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": emulator.issue_workload_token(),
        "subject_token_type": JWT_TYPE,
    }
    status, body = await post_token(client, emulator, form)
    assert status == 200
    assert claims(body["access_token"])["sub"] == emulator.client_id


async def test_token_exchange_names_the_mismatch(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    cases = {
        "audience": emulator.issue_workload_token(audience="https://elsewhere"),
        "issuer": emulator.issue_workload_token(issuer="https://other-cluster"),
        "subject": emulator.issue_workload_token(subject="system:serviceaccount:x:y"),
    }
    for what, token in cases.items():
        status, body = await _exchange(client, emulator, token)
        assert (status, body["error"]) == (400, "invalid_grant")
        assert f"does not match the federation policy {what}" in str(body["error_description"])
    status, body = await _exchange(client, emulator, emulator.issue_workload_token(audience="https://elsewhere"))
    assert "https://elsewhere" in str(body["error_description"])
    assert emulator.token_endpoint in str(body["error_description"])


async def test_token_exchange_refuses_foreign_expired_and_unknown_client_tokens(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = jwt.encode(
        {"iss": "https://kubernetes.default.svc.cluster.local", "sub": "s", "aud": ["a"], "exp": 9e9},
        key,
        algorithm="RS256",
    )
    hs = jwt.encode({"sub": "s", "exp": 9e9}, "k" * 32, algorithm="HS256")
    expired = emulator.issue_workload_token(ttl=0)
    for token, fragment in (
        (foreign, "signature"),
        (hs, "RS256"),
        (expired, "expired"),
        ("junk", "not a JWT"),
    ):
        status, body = await _exchange(client, emulator, token)
        assert (status, body["error"]) == (400, "invalid_grant")
        assert fragment in str(body["error_description"])
    status, body = await _exchange(client, emulator, emulator.issue_workload_token(), client_id="stranger")
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "stranger" in str(body["error_description"])


async def test_workload_token_and_jwks_from_the_admin_routes(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    async with client.post(emulator.workspace_url + "/_emulator/workload-token", json={"ttl": 60}) as resp:
        token = (await resp.json())["token"]
    async with client.get(emulator.workspace_url + "/_emulator/k8s/jwks") as resp:
        jwks = await resp.json()
    key = jwt.PyJWK(jwks["keys"][0]).key
    decoded = jwt.decode(token, key, algorithms=["RS256"], audience=emulator.token_endpoint)
    assert decoded["sub"] == "system:serviceaccount:default:serving-sidecar"
    status, _ = await _exchange(client, emulator, token)
    assert status == 200
