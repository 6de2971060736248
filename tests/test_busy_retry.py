"""The local API server's replay of requests SQLite turned away (``flows/busy_retry.py``).

The app under the middleware is a Starlette app with Prefect's own exception
handler (``custom_internal_exception_handler``), so what counts as "busy" is what
Prefect's server decides: a rolled-back SQLite busy error answers 503, and
Starlette raises the error again after sending that answer, as it does in
Prefect's server.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy.exc
from prefect.server.api.server import custom_internal_exception_handler
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flows.busy_retry import BUSY_LOG_PREFIX, ReplayWhenBusy, is_busy


def _real_busy_error(tmp: Path) -> sqlite3.OperationalError:
    """What SQLite raises when a deferred transaction that read before another
    writer committed tries to write (WAL mode, as Prefect's server runs it)."""
    path = tmp / "busy.db"
    first = sqlite3.connect(path, timeout=0, isolation_level=None)
    second = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        first.execute("PRAGMA journal_mode = WAL")
        first.execute("CREATE TABLE t (x)")
        first.execute("BEGIN DEFERRED")
        first.execute("SELECT count(*) FROM t").fetchall()
        second.execute("INSERT INTO t VALUES (1)")
        try:
            first.execute("INSERT INTO t VALUES (2)")
        except sqlite3.OperationalError as exc:
            return exc
        raise AssertionError("SQLite let a stale reader write")
    finally:
        first.close()
        second.close()


@pytest.fixture(scope="module")
def busy_error(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.OperationalError:
    return _real_busy_error(tmp_path_factory.mktemp("sqlite"))


def _busy_error(orig: sqlite3.OperationalError) -> Exception:
    return sqlalchemy.exc.OperationalError("INSERT INTO flow_run …", {}, orig)


def test_a_real_sqlite_busy_error_is_recognised(busy_error: sqlite3.OperationalError) -> None:
    assert is_busy(_busy_error(busy_error))
    assert is_busy(busy_error)
    assert not is_busy(
        sqlalchemy.exc.OperationalError("", {}, sqlite3.OperationalError("no such table: t"))
    )
    assert not is_busy(ValueError("database is locked"))


class FlakyAPI:
    """An endpoint that fails ``busy_times`` times as SQLite busy, then answers 201
    with what it was sent; ``other`` makes it fail with a non-retryable error."""

    def __init__(
        self, busy_times: int, other: Exception | None = None, busy: Exception | None = None
    ) -> None:
        self.busy_times = busy_times
        self.busy = busy
        self.other = other
        self.bodies: list[bytes] = []

    async def endpoint(self, request: Request) -> JSONResponse:
        body = await request.body()
        self.bodies.append(body)
        if self.other is not None:
            raise self.other
        if len(self.bodies) <= self.busy_times:
            assert self.busy is not None
            raise self.busy
        return JSONResponse({"got": body.decode()}, status_code=201)

    def app(self) -> Starlette:
        app = Starlette(routes=[Route("/api/flow_runs/", self.endpoint, methods=["POST"])])
        app.add_exception_handler(Exception, custom_internal_exception_handler)
        return app


def _post(app: Any, body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/api/flow_runs/", content=body)

    return asyncio.run(go())


def test_prefect_answers_a_busy_database_with_503_without_the_replay(
    busy_error: sqlite3.OperationalError,
) -> None:
    """The premise: without the middleware, the client gets Prefect's 503."""
    api = FlakyAPI(busy_times=1, busy=_busy_error(busy_error))
    response = _post(api.app(), b'{"flow_id": "x"}')
    assert response.status_code == 503
    assert response.json() == {"exception_message": "Service Unavailable"}


def test_a_busy_answer_is_replayed_with_the_same_body_until_it_succeeds(
    busy_error: sqlite3.OperationalError, capsys: pytest.CaptureFixture[str]
) -> None:
    api = FlakyAPI(busy_times=3, busy=_busy_error(busy_error))
    middleware = ReplayWhenBusy(api.app())
    body = b'{"flow_id": "x", "name": "' + b"n" * 50_000 + b'"}'  # several body chunks
    response = _post(middleware, body)
    assert response.status_code == 201
    assert response.json() == {"got": body.decode()}
    assert api.bodies == [body] * 4
    assert middleware.replayed == 1
    log = capsys.readouterr().out
    assert f"{BUSY_LOG_PREFIX} POST /api/flow_runs/ answered 201 after 4 tries" in log


def test_a_database_still_busy_after_the_budget_answers_503_to_the_client(
    busy_error: sqlite3.OperationalError,
) -> None:
    """The client's own back-off takes over: the middleware does not wait forever."""
    api = FlakyAPI(busy_times=10_000, busy=_busy_error(busy_error))
    middleware = ReplayWhenBusy(api.app(), budget=0.3)
    response = _post(middleware, b"{}")
    assert response.status_code == 503
    assert 2 <= len(api.bodies) < 60


@pytest.mark.parametrize(
    "error, status",
    [
        (ValueError("not a database error"), 500),
        # Prefect answers 503 for every database error; only "busy" is replayed.
        (sqlalchemy.exc.IntegrityError("", {}, sqlite3.IntegrityError("UNIQUE")), 503),
    ],
)
def test_other_errors_reach_the_client_at_once(error: Exception, status: int) -> None:
    api = FlakyAPI(busy_times=0, other=error)
    response = _post(ReplayWhenBusy(api.app()), b"{}")
    assert response.status_code == status
    assert len(api.bodies) == 1


def test_a_body_too_large_to_hold_is_sent_once_and_whole(
    busy_error: sqlite3.OperationalError,
) -> None:
    api = FlakyAPI(busy_times=1, busy=_busy_error(busy_error))
    body = b"x" * 300_000
    response = _post(ReplayWhenBusy(api.app(), max_body=100_000), body)
    assert response.status_code == 503  # not replayed: Prefect's client retries it
    assert api.bodies == [body]


def test_websockets_and_lifespan_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = ReplayWhenBusy(app)

    async def never() -> dict[str, Any]:
        raise AssertionError("the middleware must not read a non-HTTP scope")

    async def go() -> None:
        await middleware({"type": "lifespan"}, never, never)
        await middleware({"type": "websocket", "path": "/api/events/in"}, never, never)

    asyncio.run(go())
    assert seen == ["lifespan", "websocket"]


def test_the_local_api_server_serves_prefect_through_the_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``python -m flows.local_api serve`` hands uvicorn; ``--no-replay`` (for
    bench/together.py) hands it Prefect's app as it is."""
    from flows import local_api

    monkeypatch.setenv("PREFECT_UI_ENABLED", "false")
    app = local_api.api_app()
    assert isinstance(app, ReplayWhenBusy)
    assert type(app.app).__name__ == "FastAPI"
    assert not isinstance(local_api.api_app(replay=False), ReplayWhenBusy)
