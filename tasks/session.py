"""The one place that opens the Dagger connection and explains engine problems.

Users meet Dagger through this module first, so it has two duties. It refuses
early and in one line when no engine can be reached (instead of the SDK trying
to download its CLI and failing with a traceback), and it sorts failures into
transient ones worth a retry and deterministic ones that a retry cannot fix.

Retry layer: Prefect, not the SDK. The SDK's transport retries (gql + tenacity,
about 15 s over 5 attempts) are switched off with ``Config(retry=None)``: they
would retry compile errors' neighbours blindly, hide the attempt count from the
Prefect UI, and multiply with task retries. Prefect's task retries see the
exception, ask :func:`is_transient`, and back off exponentially with jitter.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import dagger
from prefect.tasks import exponential_backoff

ENGINE_HELP = (
    "Dagger needs a container runtime such as Docker (or DAGGER_SESSION_PORT/"
    "DAGGER_SESSION_TOKEN of a running session, or _EXPERIMENTAL_DAGGER_RUNNER_HOST "
    "for a remote engine)"
)

# Registry and transport failures a retry can fix. Matched on the engine's
# message, because the engine reports registry responses as text.
_TRANSIENT = re.compile(
    r"\b(5\d\d|429)\b|too many requests|service unavailable|bad gateway|gateway timeout"
    r"|internal server error|timed? ?out|timeout|connection (reset|refused|closed|aborted)"
    r"|broken pipe|eof|temporar(y|ily)|unavailable|try again",
    re.IGNORECASE,
)
# Failures a retry cannot fix, even when their text also matches the above.
_DETERMINISTIC = re.compile(
    r"\b(401|403)\b|unauthori[sz]ed|denied|forbidden|authentication required"
    r"|invalid reference|manifest unknown|name unknown|not found",
    re.IGNORECASE,
)


class EngineUnavailable(RuntimeError):
    """No Dagger engine can be reached; the message says what to set up."""


def preflight() -> None:
    """Fail in well under a second when the SDK would have to provision an engine
    that cannot exist here, rather than let it download its CLI and time out."""
    if os.environ.get("DAGGER_SESSION_PORT"):
        if not os.environ.get("DAGGER_SESSION_TOKEN"):
            raise EngineUnavailable("DAGGER_SESSION_PORT is set but DAGGER_SESSION_TOKEN is not")
        port = os.environ["DAGGER_SESSION_PORT"]
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
                pass
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(
                f"no Dagger session answers on 127.0.0.1:{port} (DAGGER_SESSION_PORT): "
                f"{exc.__class__.__name__}. {ENGINE_HELP}"
            ) from None
        return
    if os.environ.get("_EXPERIMENTAL_DAGGER_RUNNER_HOST") or os.environ.get(
        "_EXPERIMENTAL_DAGGER_CLI_BIN"
    ):
        return
    if not _container_runtime_reachable():
        raise EngineUnavailable(f"no Dagger engine is reachable: {ENGINE_HELP}")


def _container_runtime_reachable() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("tcp://"):
        return True
    sockets = [host.removeprefix("unix://")] if host.startswith("unix://") else []
    sockets += ["/var/run/docker.sock", str(Path.home() / ".docker/run/docker.sock")]
    for path in sockets:
        if path and Path(path).exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(1)
                    s.connect(path)
                return True
            except OSError:
                continue
    # Podman/nerdctl users: the Dagger CLI finds them itself when present.
    return any(shutil.which(tool) for tool in ("podman", "nerdctl", "finch"))


ENGINE_LIMIT_DEFAULT = 2


async def ensure_engine_limit(name: str) -> None:
    """Create the global concurrency limit on first use (Prefect ignores a missing
    one, which would silently mean "unlimited"). An existing limit is left as it
    is, so operators can resize it with ``prefect gcl update`` or the UI."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit = int(os.environ.get("GOBUILD_ENGINE_CONCURRENCY", ENGINE_LIMIT_DEFAULT))
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit)
                )


@asynccontextmanager
async def engine_slot() -> AsyncIterator[None]:
    """Hold one slot of the ``gobuild-engine`` global concurrency limit (name from
    ``GOBUILD_ENGINE_LIMIT``) while a build uses the engine and the registry, so that
    simultaneous triggers queue instead of overloading one engine."""
    from prefect.concurrency.asyncio import concurrency

    name = os.environ.get("GOBUILD_ENGINE_LIMIT", "gobuild-engine")
    await ensure_engine_limit(name)
    async with concurrency(name, occupy=1, strict=True):
        yield


@asynccontextmanager
async def engine_session() -> AsyncIterator[None]:
    """One Dagger session for a whole flow run; the stages use the global ``dag``."""
    preflight()
    config = dagger.Config(retry=None)
    try:
        async with dagger.connection(config):
            yield
    except dagger.ProvisionError as exc:
        raise EngineUnavailable(f"could not start a Dagger engine: {ENGINE_HELP}") from exc
    except dagger.ClientConnectionError as exc:
        raise EngineUnavailable(f"could not connect to the Dagger engine: {exc}") from exc


class EngineScope:
    """The engine slot and session of one flow run; the session opened on demand.

    A build whose every stage Prefect can serve from cache needs no engine, so the
    Dagger session (the SDK's introspection, or starting an engine) is opened only
    before the first stage that needs it. The concurrency slot is taken up front:
    it costs a few milliseconds there, but about 2 s when acquired after a task run
    in the same flow run (measured with Prefect 3.9.1).

    A session whose connection was lost is gone for good on a real engine (the
    SDK's global ``dag`` keeps the dead connection), so a retry after a lost
    connection must close it and open a new one: :func:`retry_transient` marks
    the scope ``lost`` and the next attempt's :func:`engine_ready` reopens it.
    """

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._session: contextlib.AsyncExitStack | None = None
        self.lost = False
        self.sessions = 0
        self._token: contextvars.Token[EngineScope | None] | None = None

    @property
    def opened(self) -> bool:
        return self._session is not None

    async def __aenter__(self) -> EngineScope:
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(engine_slot())
        except BaseException:
            await self._stack.aclose()
            raise
        self._token = _CURRENT.set(self)
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        if self._token is not None:
            _CURRENT.reset(self._token)
        await self._close_session()
        return await self._stack.__aexit__(*exc_info)  # type: ignore[arg-type]

    async def open(self) -> None:
        """Open the session if none is open, or replace one whose connection was lost."""
        if self.lost:
            await self._close_session()
        if self._session is None:
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(engine_session())
            self._session, self.lost = stack, False
            self.sessions += 1

    async def _close_session(self) -> None:
        stack, self._session = self._session, None
        if stack is not None:
            # Closing a session whose connection is already gone may fail again;
            # there is nothing left to release on our side then.
            with contextlib.suppress(Exception):
                await stack.aclose()


_CURRENT: contextvars.ContextVar[EngineScope | None] = contextvars.ContextVar(
    "gobuild_engine_scope", default=None
)


async def engine_ready() -> None:
    """Called by each stage before it builds a Dagger chain: opens the run's session
    if the flow has not yet, and replaces one lost by an earlier attempt. Outside a
    flow (the stages' plain functions in tests) the caller owns the connection."""
    scope = _CURRENT.get()
    if scope is not None:
        await scope.open()


def lost_connection(exc: BaseException) -> bool:
    """True when the engine session itself is gone, not just one request."""
    return isinstance(
        exc, dagger.TransportError | dagger.ClientConnectionError | ConnectionError
    )


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on a second attempt."""
    if isinstance(exc, EngineUnavailable | dagger.ExecError | ValueError):
        return False
    text = str(exc)
    if isinstance(exc, dagger.TransportError | dagger.ClientConnectionError | ConnectionError):
        return not _DETERMINISTIC.search(text)
    if isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, dagger.QueryError):
        return bool(_TRANSIENT.search(text)) and not _DETERMINISTIC.search(text)
    return False


async def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only what :func:`is_transient` allows."""
    exc = await state.aresult(raise_on_failure=False)
    if not (isinstance(exc, BaseException) and is_transient(exc)):
        return False
    scope = _CURRENT.get()
    if scope is not None and lost_connection(exc):
        scope.lost = True
    return True


def retry_options() -> dict:
    """The task options of every stage that talks to an engine or registry.

    Three retries with exponential backoff (base ``GOBUILD_RETRY_BASE_SECONDS``,
    default 2 s: 2, 4, 8 s) and 50 % jitter, so that builds that failed together
    on a busy registry do not come back together.
    """
    base = float(os.environ.get("GOBUILD_RETRY_BASE_SECONDS", "2"))
    return {
        "retries": 3,
        "retry_delay_seconds": exponential_backoff(backoff_factor=base),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_transient,
    }
