"""A build that surely needs the engine opens its Dagger session while Prefect
starts the run (``flows.build.run_build``, ``tasks/session.session_opened_early``).

Prefect spends 0.15-0.2 s creating and starting a flow run before the flow's
first line; a Dagger session takes as long or longer (a real engine's far more).
The command line overlaps the two for forced, publishing and git builds; any
other build may be served from cache and still connects only when it must.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.dagger_test_engine.server import TestEngine
from tests.prefect_fixtures import PrefectAPI


@pytest.fixture
def joins(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many users each join found in its session, counting itself."""
    from tasks import session

    seen: list[int] = []
    original = session.SharedSession.join

    async def join(self: session.SharedSession) -> None:
        seen.append(self.users + 1)
        await original(self)

    monkeypatch.setattr(session.SharedSession, "join", join)
    return seen


def introspections(engine: TestEngine) -> int:
    requests = engine.log.snapshot()["requests"]
    return sum(1 for r in requests if r["paths"][:1] == ["__schema.queryType.name"])


def build(values: dict[str, Any]) -> Any:
    from flows.build import run_build
    from tasks.params import parse_params

    return asyncio.run(run_build(values, parse_params(values)))


def test_a_forced_build_joins_the_session_opened_while_prefect_starts_the_run(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    joins: list[int],
) -> None:
    from tasks import session

    dagger_engine.log.clear()
    state = build(
        {
            "source": str(hello_go),
            "version": "8.1.0",
            "output": str(tmp_path / "forced.tar"),
            "run_checks": False,
            "force_rebuild": True,
        }
    )
    assert state.is_completed(), state.message
    assert Path(state.result().tarball).is_file()
    # The early opener joined first; the run found it there and joined it.
    assert joins == [1, 2]
    assert introspections(dagger_engine) == 1
    assert session._SHARED is None  # closed once both left


def test_a_build_the_cache_may_serve_opens_nothing_early(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    joins: list[int],
) -> None:
    values = {
        "source": str(hello_go),
        "version": "8.2.0",
        "output": str(tmp_path / "cached.tar"),
        "run_checks": False,
    }
    assert build(values).is_completed()
    assert joins == [1]  # the run's own session, opened once the cache missed
    joins.clear()
    dagger_engine.log.clear()
    assert build(values).is_completed()  # unchanged: served from Prefect's cache
    assert joins == []
    assert dagger_engine.log.snapshot()["requests"] == []


def test_a_run_started_as_the_command_line_starts_it_makes_one_sync_prefect_client(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each new Prefect client builds an SSL context (~50 ms of CPU for a
    verifying one). Without ``flows.prefect_client.shared_prefect_client`` a run
    makes three synchronous ones: two to read the server's default result
    storage, one in the thread that renews the engine slot's lease. With it, one,
    and the lease thread renews with it."""
    from prefect.client.orchestration import SyncPrefectClient

    made: list[int] = []
    renewed_with: list[int] = []
    init = SyncPrefectClient.__init__
    renew = SyncPrefectClient.renew_concurrency_lease

    def counting_init(self: SyncPrefectClient, *args: Any, **kwargs: Any) -> None:
        made.append(id(self))
        init(self, *args, **kwargs)

    def recording_renew(self: SyncPrefectClient, *args: Any, **kwargs: Any) -> Any:
        renewed_with.append(id(self))
        return renew(self, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "__init__", counting_init)
    monkeypatch.setattr(SyncPrefectClient, "renew_concurrency_lease", recording_renew)
    state = build(
        {
            "source": str(hello_go),
            "version": "8.3.0",
            "output": str(tmp_path / "one-client.tar"),
            "run_checks": False,
            "force_rebuild": True,
        }
    )
    assert state.is_completed(), state.message
    assert len(made) == 1, made
    assert renewed_with and set(renewed_with) == set(made)


def test_an_early_session_that_fails_leaves_the_failure_to_the_run(
    dagger_engine: TestEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine turns the session's token away: the early opener keeps quiet,
    and the run's own attempt raises the plain message the flow reports."""
    from tasks import session
    from tasks.preflight import EngineUnavailable

    monkeypatch.setenv("DAGGER_SESSION_TOKEN", "not-the-token")

    async def scenario() -> None:
        async with session.session_opened_early(True):
            await asyncio.sleep(0.2)  # the early attempt has failed by now, or soon will
            async with session.engine_session():
                pass

    with pytest.raises(EngineUnavailable, match="could not connect to the Dagger engine"):
        asyncio.run(scenario())
    assert session._SHARED is None


def _busy(seconds: float) -> None:
    """CPU work, as the opener's transport does loading the CA bundle."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_body_starts_once_the_early_session_has_sent_its_first_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a head start the opener would get the loop only once the body
    blocks it (Prefect's synchronous start), and its first request would leave
    that much later. ``engine_session`` stands in for one that is busy 20 ms,
    then sends, then waits on the engine."""
    from tasks import session

    seen: dict[str, bool] = {}
    answered: list[asyncio.Event] = []

    @asynccontextmanager
    async def opening() -> AsyncIterator[None]:
        _busy(0.01)
        await asyncio.sleep(0)
        _busy(0.01)
        seen["sent"] = True
        await answered[0].wait()  # the engine answers
        yield

    monkeypatch.setattr(session, "engine_session", opening)

    async def scenario() -> None:
        answered.append(asyncio.Event())
        async with session.session_opened_early(True):
            seen["body saw it sent"] = seen.get("sent", False)
            answered[0].set()

    asyncio.run(scenario())
    assert seen["body saw it sent"]


def test_the_head_start_is_bounded_for_an_opener_that_never_waits() -> None:
    from tasks import session

    async def scenario() -> bool:
        async def opener() -> None:
            while True:
                _busy(0.01)
                await asyncio.sleep(0)

        task = asyncio.create_task(opener())
        await session._head_start(task)
        still_running = not task.done()
        task.cancel()
        return still_running

    assert asyncio.run(scenario())


def test_surely_needs_engine_is_read_from_the_parameters(hello_go: Path) -> None:
    from tasks.params import parse_params

    local = {"source": str(hello_go)}
    assert not parse_params(local).surely_needs_engine
    assert parse_params({**local, "force_rebuild": True}).surely_needs_engine
    assert parse_params({**local, "image_refs": ["127.0.0.1:5000/app:1"]}).surely_needs_engine
    git = {"source": "https://example.com/org/app.git", "git_ref": "main"}
    assert parse_params(git).surely_needs_engine
