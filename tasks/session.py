"""The one place that opens the Dagger connection for a flow run.

A run holds one slot of a global concurrency limit while it uses the engine, and
one Dagger session, opened only when a stage needs it and replaced when its
connection was lost. Engine problems become plain messages here:
:class:`tasks.preflight.EngineUnavailable` with what to set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from tasks.preflight import ENGINE_HELP, EngineUnavailable, preflight

if TYPE_CHECKING:
    import dagger

ENGINE_LIMIT_DEFAULT = 2


ENGINE_LEASE_SECONDS_DEFAULT = 60.0  # the least the Prefect server accepts


async def ensure_engine_limit(name: str) -> tuple[int, int]:
    """Create the global concurrency limit on first use (Prefect ignores a missing
    one, which would silently mean "unlimited"). An existing limit is left as it
    is, so operators can resize it with ``prefect gcl update`` or the UI.

    -> (slots in use, slots in all), for telling the user why a run waits."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit = int(os.environ.get("GOBUILD_ENGINE_CONCURRENCY", ENGINE_LIMIT_DEFAULT))
    async with get_client() as client:
        try:
            found = await client.read_global_concurrency_limit_by_name(name)
            return found.active_slots, found.limit
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit)
                )
            return 0, limit


SLOT_WAIT_NOTICE_SECONDS = 1.0


@asynccontextmanager
async def engine_slot() -> AsyncIterator[None]:
    """Hold one slot of the ``gobuild-engine`` global concurrency limit (name from
    ``GOBUILD_ENGINE_LIMIT``) while a build uses the engine and the registry, so that
    simultaneous triggers queue instead of overloading one engine.

    The slot is a lease the run renews while it lives (``GOBUILD_ENGINE_LEASE_SECONDS``,
    default 60 s, the least the Prefect server accepts): when the process holding
    it dies, the server takes the slot back once the lease runs out (plus its
    repossessor's 15 s loop), instead of after Prefect's default of five minutes.

    The slot is asked for at once, one request when it is free; the limit is read
    (and created, on first use) only when that fails, and a run still waiting
    after a second says why.
    """
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency

    from tasks import progress

    name = os.environ.get("GOBUILD_ENGINE_LIMIT", "gobuild-engine")
    lease = float(os.environ.get("GOBUILD_ENGINE_LEASE_SECONDS", ENGINE_LEASE_SECONDS_DEFAULT))
    waiting = time.monotonic()
    notice = asyncio.create_task(_say_why_waiting(name))
    try:
        async with contextlib.AsyncExitStack() as slot:
            try:
                await slot.enter_async_context(
                    concurrency(name, occupy=1, strict=True, lease_duration=lease)
                )
            except ConcurrencySlotAcquisitionError:
                # Strict: a missing limit fails instead of meaning "unlimited".
                # Create it and ask once more; any other failure fails again.
                await ensure_engine_limit(name)
                await slot.enter_async_context(
                    concurrency(name, occupy=1, strict=True, lease_duration=lease)
                )
            notice.cancel()
            progress.slot_acquired(name, time.monotonic() - waiting)
            yield
    finally:
        notice.cancel()


async def _say_why_waiting(name: str) -> None:
    """Log the limit's occupancy once a run has waited for a slot a while."""
    from tasks import progress

    await asyncio.sleep(SLOT_WAIT_NOTICE_SECONDS)
    with contextlib.suppress(Exception):  # only an explanation; the wait goes on
        in_use, slots = await ensure_engine_limit(name)
        if in_use >= slots:
            progress.slot_waiting(name, in_use, slots)


class SharedSession:
    """The process's one Dagger session, shared by the flow runs that overlap in it.

    dagger-io keeps one connection per process, behind the global ``dag``
    (``SharedConnection``). Two flow runs of one process that each entered
    ``dagger.connection()`` (a parent flow gathering builds of several services)
    would race to connect it ("Transport is already connected"), and the first
    to finish would close it under the other. So a task of its own holds the
    connection while any run uses it: opened for the first, closed after the
    last. Being one task, it also enters and leaves the SDK's context in the same
    task, as the anyio scopes inside it require, whichever run came first or
    left last.

    A lost connection is lost for every run sharing it: :meth:`retire` takes the
    session out of use, and the next one opens once this one has closed (both
    would drive the same SDK singleton).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, after: asyncio.Task[None] | None) -> None:
        self.loop = loop
        self.users = 0
        self._after = after  # the holder of the session before this one, maybe still closing
        self._ready: asyncio.Future[None] = loop.create_future()
        self._release = asyncio.Event()
        self.holder: asyncio.Task[None] | None = None

    async def join(self) -> None:
        self.users += 1
        try:
            if self.holder is None:
                global _LAST_HOLDER
                self.holder = _LAST_HOLDER = asyncio.create_task(self._hold())
            await asyncio.shield(self._ready)  # one run cancelled must not close it for all
        except BaseException:
            await self.leave()
            raise

    async def leave(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.retire()
            if self.holder is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.holder)

    def retire(self) -> None:
        """No run joins this session any more; it closes when its last run leaves."""
        global _SHARED
        if _SHARED is self:
            _SHARED = None
        if self.users == 0:
            self._release.set()

    async def _hold(self) -> None:
        import dagger

        from tasks.progress import dagger_log_output

        if self._after is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._after)
        # The engine's own progress stream goes to stderr with `--progress plain`.
        config = dagger.Config(retry=None, log_output=dagger_log_output())
        error: BaseException | None = None
        try:
            async with dagger.connection(config):
                self._ready.set_result(None)
                await self._release.wait()
        except dagger.ProvisionError as exc:
            error = EngineUnavailable(f"could not start a Dagger engine: {ENGINE_HELP}")
            error.__cause__ = exc
        except dagger.ClientConnectionError as exc:
            error = EngineUnavailable(f"could not connect to the Dagger engine: {exc}")
            error.__cause__ = exc
        except Exception as exc:  # closing a connection already gone may fail again
            error = exc
        finally:
            # The SDK keeps a failed or closed connection's address otherwise.
            await _forget_connection()
            self.retire()
            if not self._ready.done():
                self._ready.set_exception(
                    error or EngineUnavailable("the Dagger session closed before it opened")
                )


_SHARED: SharedSession | None = None
_LAST_HOLDER: asyncio.Task[None] | None = None


@asynccontextmanager
async def engine_session() -> AsyncIterator[SharedSession]:
    """The process's Dagger session, for one flow run (see :class:`SharedSession`);
    the stages use the global ``dag``. The SDK is imported by the session's
    holder, for the first stage that needs the engine (``tasks/sdk.py``: a build
    served from cache never pays for it)."""
    global _SHARED
    preflight()
    loop = asyncio.get_running_loop()
    if _SHARED is not None and _SHARED.loop is not loop:
        if _SHARED.users and not _SHARED.loop.is_closed():  # a closed loop's runs are gone
            raise EngineUnavailable(
                "the Dagger session of this process is in use by a build in another "
                "event loop; start simultaneous builds in one event loop, or in "
                "separate processes"
            )
        _SHARED = None
    if _SHARED is None:
        _SHARED = SharedSession(loop, after=_last_holder(loop))
    session = _SHARED
    await session.join()
    try:
        yield session
    finally:
        await session.leave()


@asynccontextmanager
async def session_opened_early(wanted: bool) -> AsyncIterator[None]:
    """Start opening the process's Dagger session now, beside whatever the body
    does (Prefect creating and starting the flow run, ~0.15-0.2 s), for a build
    that will surely need the engine; the run's own :class:`EngineScope` joins it.

    The caller decides ``wanted`` from the parameters alone (a forced, publishing
    or git build: ``BuildParams.surely_needs_engine``): a build Prefect can serve
    from cache must never pay for a session. A session that fails to open here is
    left to the run: it opens its own and reports the failure as usual. Closed
    once the body is done and no run uses it any more.
    """
    if not wanted:
        yield
        return
    stack = contextlib.AsyncExitStack()
    opening = asyncio.create_task(stack.enter_async_context(engine_session()))
    try:
        await _head_start(opening)
        yield
    finally:
        with contextlib.suppress(BaseException):  # the run reports its own engine errors
            await opening
        await stack.aclose()


HEAD_START_MAX_SECONDS = 0.15
HEAD_START_SLICE_SECONDS = 0.005


async def _head_start(opening: asyncio.Task[object]) -> None:
    """Let the opener run until its first request to the engine has left.

    A task created is not yet running: left alone, the opener would get the loop
    only once the body blocks, and Prefect starting a run blocks it with
    synchronous work first (each new API client loads the CA bundle, ~50 ms of
    CPU). The opener's own transport loads it too before its first request,
    so the engine would see the session ~0.1 s later than a plain script shows
    it, and a session takes longer to open than Prefect takes to start a run.
    So the loop is the opener's in short slices while it keeps this process
    busy; the first slice that passes mostly idle means it waits on the engine
    (or a ``dagger session`` it started), and the body goes on. At most
    ``HEAD_START_MAX_SECONDS``, measured in ``bench/run.py``'s overhead section."""
    deadline = time.monotonic() + HEAD_START_MAX_SECONDS
    while not opening.done() and time.monotonic() < deadline:
        busy = time.process_time()
        await asyncio.wait({opening}, timeout=HEAD_START_SLICE_SECONDS)
        if time.process_time() - busy < HEAD_START_SLICE_SECONDS / 2:
            return


async def _forget_connection() -> None:
    """Drop the SDK's shared connection: it keeps a failed or closed session's
    address otherwise, and every later ``dagger.connection()`` in this process
    would reuse it (dagger-io 0.21, ``SharedConnection``)."""
    import dagger

    with contextlib.suppress(Exception):
        await dagger.close()


def _last_holder(loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """The holder of the latest session of this loop, if it may still be closing
    (each holder waits for the one before it, so the latest is enough)."""
    last = _LAST_HOLDER
    if last is None or last.done() or last.get_loop() is not loop:
        return None
    return last


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
        self._shared: SharedSession | None = None
        self.lost = False
        # Binaries compiled in this session, by digest: still in the engine, so a
        # later stage uses them there instead of uploading the host's copy.
        self.files: dict[str, dagger.File] = {}
        self._token: contextvars.Token[EngineScope | None] | None = None
        # Makes this run's host directory call its own (see host_snapshot_excludes).
        self.snapshot = secrets.token_hex(8)

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

    @property
    def is_open(self) -> bool:
        """A session is open and its connection was not lost."""
        return self._session is not None and not self.lost

    async def open(self) -> None:
        """Open the session if none is open, or replace one whose connection was lost."""
        if self.lost:
            if self._shared is not None:
                self._shared.retire()  # lost for every run in it, not only this one
            await self._close_session()
        if self._session is None:
            stack = contextlib.AsyncExitStack()
            self._shared = await stack.enter_async_context(engine_session())
            self._session, self.lost = stack, False

    async def _close_session(self) -> None:
        stack, self._session, self._shared = self._session, None, None
        self.files.clear()  # they belong to the session
        if stack is not None:
            # The session's holder closes it once no run uses it (SharedSession).
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


def remember_in_engine(sha256: str, file: dagger.File) -> None:
    """Note a file the engine holds in this run's session (a compiled binary)."""
    scope = _CURRENT.get()
    if scope is not None and scope._session is not None:
        scope.files[sha256] = file


def in_engine(sha256: str) -> dagger.File | None:
    """The file with this digest still in this run's session, if any."""
    scope = _CURRENT.get()
    return scope.files.get(sha256) if scope is not None else None


def host_snapshot_excludes() -> list[str]:
    """An exclude pattern unique to this flow run, for its ``host().directory``.

    The engine caches ``host.directory`` per client by its arguments, unless
    ``noCache`` (dagql ``RequestedCacheInput``: PerClientInput, core/schema/host.go).
    A session outlives one run where it is shared: ``dagger run`` around a worker
    (``DAGGER_SESSION_PORT``), or runs that overlap in one process (SharedSession).
    There, a second build of one directory would get the first build's snapshot
    and compile old code under the new source's digest. ``noCache`` would read the
    directory again at each use, so the compile of each platform and the assemble
    stage would each see a snapshot of its own, and cost a request to pin one. A
    pattern that names no file makes the call this run's own: one snapshot for the
    run, read once, as in a session of its own. Outside a flow run (the stages'
    plain functions) the caller owns the session: nothing is added."""
    scope = _CURRENT.get()
    return [f".gobuild-run-{scope.snapshot}"] if scope is not None else []


def current_scope() -> EngineScope | None:
    """The engine scope of the flow run this code runs in, if any."""
    return _CURRENT.get()
