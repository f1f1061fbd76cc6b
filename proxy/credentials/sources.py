"""Where tokens come from: the workspace token (OAuth M2M or workload identity) and one data-plane
token per (invocation URL, authorization details), minted from the workspace token by jwt-bearer exchange.

Which token may go where: `targets.token_kind` (a worker of `--workers` checks the same without this
module's OAuth library).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from proxy.credentials.cache import Fetch, FetchOutcome, Observer, RefreshingToken, Token, TokenCache
from proxy.credentials.oauth import OAuthClient
from proxy.credentials.targets import token_kind
from proxy.errors import NoCredential, TokenError

# Which credential a token belongs to: None for the workspace token, else (invocation URL, authorization details).
TokenKey = tuple[str, str] | None


def secret_from_file(path: Path) -> Callable[[], asyncio.Future[str]]:
    """Read the secret on every fetch, so a rotated Kubernetes Secret is picked up without a restart."""

    def read() -> str:
        try:
            return path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise TokenError("invalid_client", f"cannot read client secret file {path}: {reason}") from None

    return lambda: asyncio.ensure_future(asyncio.to_thread(read))


async def watch_file(path: Path, on_change: Callable[[], object], *, interval: float = 2.0) -> None:
    """Call `on_change` whenever `path` changes (Kubernetes swaps the Secret's symlink); runs until cancelled."""

    def fingerprint() -> tuple[int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    last = await asyncio.to_thread(fingerprint)
    while True:
        await asyncio.sleep(interval)
        current = await asyncio.to_thread(fingerprint)
        if current != last:
            last = current
            on_change()


def secret_from_value(value: str) -> Callable[[], asyncio.Future[str]]:
    async def read() -> str:
        return value

    return lambda: asyncio.ensure_future(read())


def workload_identity_fetch(oauth: OAuthClient, token_file: Path, *, audience: str | None = None) -> Fetch:
    """Exchange the projected service-account token (re-read each time: the kubelet rotates it).

    With `audience`, a token minted for another audience is refused locally with a clear message.
    """

    def read() -> str:
        try:
            token = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise TokenError("invalid_request", f"cannot read token file {token_file}: {reason}") from None
        if audience is not None:
            check_audience(token, audience, token_file)
        return token

    async def fetch() -> Token:
        return await oauth.token_exchange(subject_token=await asyncio.to_thread(read))

    return fetch


def check_audience(token: str, audience: str, source: Path) -> None:
    """Raise TokenError unless the (unverified) JWT's `aud` includes `audience`. The token is never logged."""
    import jwt  # only workload identity with --token-audience needs it: not loaded otherwise (memory)

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("invalid_request", f"token file {source} does not hold a JWT") from None
    found = claims.get("aud")
    audiences = [found] if isinstance(found, str) else list(found or [])
    if audience not in audiences:
        raise TokenError(
            "invalid_request",
            f"token file {source} was minted for audience {audiences}, not {audience!r} (--token-audience); "
            "fix the projected volume's audience",
        )


MAX_TARGETS = 4096  # (URL, authorization details) pairs remembered as checked


class Credentials:
    """The workspace token and the data-plane tokens derived from it.

    `on_workspace_change` is called whenever the workspace token or its last error changes (readiness
    follows it). When a workspace token is obtained, data-plane tokens that failed meanwhile (most for
    want of it) are retried at once instead of waiting out their backoff.
    """

    def __init__(
        self,
        oauth: OAuthClient,
        workspace_fetch: Fetch,
        *,
        workspace_url: str,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        on_workspace_change: Callable[[], object] | None = None,
        on_token: Callable[[TokenKey, Token], None] | None = None,
    ) -> None:
        """`on_token(key, token)` runs whenever a token is obtained, refreshes included."""
        self._oauth = oauth
        self._on_token = on_token
        self._workspace_url = workspace_url
        self._clock = clock
        self._observer = observer
        self.data_plane = TokenCache()
        self._targets: dict[tuple[str, str | None], RefreshingToken] = {}  # for_target's checked answers
        self.workspace = RefreshingToken(
            workspace_fetch,
            kind="workspace",
            clock=clock,
            observer=self._observe_workspace,
            on_change=on_workspace_change or (lambda: None),
            on_token=None if on_token is None else lambda token: on_token(None, token),
        )

    def __repr__(self) -> str:
        return f"Credentials(workspace={self.workspace!r}, data_plane={self.data_plane!r})"

    def _observe_workspace(self, outcome: FetchOutcome) -> None:
        if self._observer is not None:
            self._observer(outcome)
        if outcome.ok:
            self.data_plane.retry_now()

    def _token(self, fetch: Fetch, *, kind: str, label: str, key: TokenKey) -> RefreshingToken:
        hook = self._on_token
        on_token = None if hook is None else lambda token: hook(key, token)
        return RefreshingToken(
            fetch, kind=kind, label=label, clock=self._clock, observer=self._observer, on_token=on_token
        )

    def reload(self) -> int:
        """SIGHUP: fetch a workspace token now (re-reading the secret or token file) and end every data-plane
        failure backoff. Returns how many tokens were in a failure backoff."""
        failing = int(self.workspace.last_error is not None)
        self.workspace.refresh_now()
        return failing + self.data_plane.retry_now()

    def for_target(self, url: str, authorization_details: str | None, *, label: str) -> RefreshingToken:
        """The token for an invocation URL: data-plane when it has authorization details, else workspace.

        BadMetadata when no token may go to `url` (`token_kind`): nothing is minted or sent then.
        """
        key = (url, authorization_details)
        found = self._targets.get(key)
        if found is not None:  # checked before: the steady path is one look-up
            return found
        kind = token_kind(url, authorization_details, self._workspace_url)
        if kind == "workspace" or authorization_details is None:
            found = self.workspace
        else:
            pair = (url, authorization_details)
            fetch = self._exchange_fetch(authorization_details)
            found = self.data_plane.get_or_create(
                pair, lambda: self._token(fetch, kind="data_plane", label=label, key=pair)
            )
        if len(self._targets) >= MAX_TARGETS:
            self._targets.clear()
        self._targets[key] = found
        return found

    async def forget(self, url: str, authorization_details: str | None) -> None:
        self._targets.pop((url, authorization_details), None)
        if authorization_details is not None:
            await self.data_plane.discard((url, authorization_details))

    def _exchange_fetch(self, authorization_details: str) -> Fetch:
        async def fetch() -> Token:
            for attempt in range(2):
                try:
                    assertion = await self.workspace.get()
                except NoCredential as exc:
                    raise TokenError("workspace_token_unavailable", exc.message) from None
                try:
                    return await self._oauth.jwt_bearer(
                        assertion=assertion, authorization_details=authorization_details
                    )
                except TokenError as exc:
                    if exc.error != "invalid_grant" or attempt:
                        raise
                    self.workspace.invalidate(assertion)  # revoked or expired assertion: mint one anew
            raise AssertionError("unreachable")

        return fetch

    def start(self) -> None:
        self.workspace.start()

    async def close(self) -> None:
        await self.data_plane.close()
        await self.workspace.close()
