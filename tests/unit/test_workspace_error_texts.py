"""A workspace error's text reaches callers cut and redacted, like a token server's."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

import pytest
from multidict import CIMultiDict

from proxy.endpoints import metadata_fetcher
from proxy.errors import WorkspaceRefused


class Token:
    async def get(self) -> str:
        return "workspace-token"

    def invalidate(self, access_token: str) -> None:
        return None


@pytest.mark.parametrize("as_json", [True, False])
async def test_a_huge_workspace_refusal_is_cut_and_redacted(as_json: bool) -> None:
    basic = base64.b64encode(b"sp:secret-value-123").decode()
    text = f"denied; you sent Basic {basic} and Bearer abcdefghijklmnop\n" + "y" * 5_000_000
    body = json.dumps({"error_code": "PERMISSION_DENIED", "message": text}).encode() if as_json else text.encode()

    async def http(
        method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        return 403, CIMultiDict(), answer

    answer = body
    with pytest.raises(WorkspaceRefused) as refused:
        await metadata_fetcher(http, Token(), "https://ws.example.com")("fraud-ro")
    message = refused.value.message
    assert len(message) < 500 and "\n" not in message
    assert basic not in message and "abcdefghijklmnop" not in message and "Basic [REDACTED]" in message
