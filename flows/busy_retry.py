"""Replay, inside the local API server, a request that SQLite turned away as busy.

Prefect's server answers 503 when a database error rolled the request's
transaction back and a retry may succeed (``is_client_retryable_exception`` in
``prefect/server/api/server.py``). On SQLite that happens whenever two writers
meet: a deferred transaction that read before another one committed cannot
write (``SQLITE_BUSY_SNAPSHOT``), and no busy timeout helps it. Builds started
together, or one right after another while the server still records the last
one's events, meet this often (about 3 of some 50 requests when 4 builds start
at once: ``bench/together.py``). Prefect's client then waits 2 s, 4 s, ...
before it asks again, for an error that clears in milliseconds.

So the local server replays such a request itself, after a few milliseconds,
for up to ``budget`` seconds, and only then lets the 503 reach the client,
whose own back-off takes over from there. A replay is what the client's retry
would send: the same request, after the failed transaction was rolled back.
Only a busy database is replayed; a 503 for any other error (Prefect answers
503 for every database error) reaches the client at once.
Only plain HTTP requests with a body of at most ``max_body`` bytes are replayed
(Prefect's API bodies are JSON, far smaller); websockets and lifespan pass
through untouched.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

RETRYABLE_STATUS = 503
FIRST_DELAY = 0.01
MAX_DELAY = 0.25
BUSY_LOG_PREFIX = "database busy, replayed:"


class ReplayWhenBusy:
    """ASGI middleware: a 503 that ``app`` answered for a busy database is held
    back and ``app`` asked again; every other answer goes to the client as it is."""

    def __init__(
        self, app: ASGIApp, *, budget: float = 5.0, max_body: int = 16 * 1024 * 1024
    ) -> None:
        self.app = app
        self.budget = budget
        self.max_body = max_body
        self.replayed = 0  # requests answered by a replay rather than the first try

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, self.max_body)
        if not complete:  # too large to hold: one try, the rest of the body streamed
            await self.app(scope, _replaying(body, receive), send)
            return
        started = time.monotonic()
        delay = FIRST_DELAY
        tries = 0
        while True:
            tries += 1
            last_try = time.monotonic() + delay >= started + self.budget
            status = await self._try(dict(scope), _replaying(body, receive), send, last_try)
            if status is not None:
                if tries > 1:
                    self.replayed += 1
                    busy = status == RETRYABLE_STATUS
                    self._say(scope, tries, started, "still busy" if busy else f"answered {status}")
                return
            await anyio.sleep(delay * random.uniform(1.0, 2.0))
            delay = min(delay * 2, MAX_DELAY)

    def _say(self, scope: Scope, tries: int, started: float, outcome: str) -> None:
        """One line in the server's log per replayed request: the measure of how
        often builds meet in the database (``bench/together.py`` counts them)."""
        took = time.monotonic() - started
        print(
            f"{BUSY_LOG_PREFIX} {scope['method']} {scope['path']} {outcome} "
            f"after {tries} tries, {took:.2f} s",
            flush=True,
        )

    async def _try(self, scope: Scope, receive: Receive, send: Send, last_try: bool) -> int | None:
        """Run ``app`` once; -> the status it answered, or None when it answered 503
        for a busy database and that answer was dropped to ask again (never on the
        last try: the client then gets it as it is)."""
        held: list[Message] = []
        status = 0  # 0: the app sent no answer at all

        async def intercept(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            if status == RETRYABLE_STATUS and not last_try:
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, intercept)
        except Exception as exc:
            # Starlette's ServerErrorMiddleware raises the error again after it
            # sent the handler's 503, for the server to log: that error says
            # whether the 503 was a busy database.
            if held and is_busy(exc):
                return None
            for message in held:
                await send(message)
            raise
        for message in held:  # a 503 for another reason: the client decides
            await send(message)
        return status


def is_busy(exc: BaseException) -> bool:
    """SQLite turned a writer away because another one was writing: the error that
    clears in milliseconds (Prefect's server calls it retryable, among others)."""
    orig = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    name = getattr(orig, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or any(
        "database is locked" in str(a) for a in orig.args
    )


async def _read_body(receive: Receive, limit: int) -> tuple[list[Message], bool]:
    """The request's body messages; -> (messages, whether the body is complete)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # a disconnect: nothing to replay
            return messages, True
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, True
        if size > limit:
            return messages, False


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out the held body again, then waits on the real one
    (for the rest of a partial body, or for the client's disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return dict(pending.pop(0))
        return await receive()

    return replay
