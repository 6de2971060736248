"""GraphQL-over-HTTP front of the Dagger test engine, with sessions, a query log
and faults.

The real dagger-io SDK finds an engine through ``DAGGER_SESSION_PORT`` and
``DAGGER_SESSION_TOKEN`` and posts queries to ``/query`` with the token as the
Basic-auth user. This server answers those exactly as the engine would
(introspection, lazy objects, EXEC_ERROR extensions), and refuses a query the
real engine of reference would refuse (``reference.py``).

Like one real engine it serves several client sessions, each with its own token,
working directory and registry credentials (``sessions.py``); caches and results
are shared. A session ends when its connection is dropped (the ``drop`` fault) or
when its CLI process ends: every later request with its token then gets its
connection closed without an answer, which the SDK reports as a
``TransportError``, as it does for a real session that is gone. The session
created with the engine (``token``, ``env``) stands for ``dagger run``; more come
from ``POST /_test/sessions``, which the ``dagger session`` stand-in (``cli.py``)
calls for the SDK.

Test-only endpoints live under ``/_test/`` and take the engine's admin token
(``admin_token``, which is also the first session's token): the query log, fault
rules, published images, sessions, and the Go toolchain it runs (``info``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    execute,
    parse,
    validate,
)

from . import schema as schema_mod
from .engine import Engine, EngineError, ExecError, FaultRule, Obj
from .execution import serving
from .reference import refusal
from .sessions import Session, reset_current, set_current


class HTTPFault(Exception):
    """Raised by a fault rule to answer with HTTP 500 or drop the connection."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class QueryLog:
    """Every request's field paths, per-field call counts, and the commands run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {}
        self.execs: list[list[str]] = []

    def add_request(self, paths: list[str], session: str = "") -> None:
        with self._lock:
            self.requests.append({"time": time.time(), "paths": paths, "session": session})

    def add_call(self, name: str) -> int:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self.calls[name]

    def add_exec(self, args: list[str]) -> None:
        with self._lock:
            self.execs.append(list(args))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": list(self.requests),
                "calls": dict(self.calls),
                "execs": [list(e) for e in self.execs],
            }

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.calls.clear()
            self.execs.clear()


def field_paths(doc) -> list[str]:
    """``container.from.withExec.stdout``-style paths of every leaf selection."""
    out: list[str] = []

    def walk(sel_set, prefix: str) -> None:
        for sel in sel_set.selections:
            if isinstance(sel, FieldNode):
                name = sel.name.value
                path = f"{prefix}.{name}" if prefix else name
                if sel.selection_set:
                    walk(sel.selection_set, path)
                else:
                    out.append(path)
            elif getattr(sel, "selection_set", None):
                walk(sel.selection_set, prefix)

    for d in doc.definitions:
        if isinstance(d, OperationDefinitionNode):
            walk(d.selection_set, "")
    return out


class TestEngine:
    """The engine, its HTTP server and the test controls, in one object."""

    __test__ = False  # not a pytest test class
    is_real = False  # tests/real_engine.py RealEngine: the real engine's stand-in for tests

    def __init__(
        self,
        state_dir: Path,
        *,
        token: str | None = None,
        port: int = 0,
        workdir: Path | str | None = None,
    ) -> None:
        # The first session's working directory: its client's (``dagger run``'s)
        # directory, fixed now; relative host paths never follow this process's cwd.
        self.workdir = Path(os.path.abspath(workdir or os.getcwd()))
        self.engine = Engine(state_dir, cwd=self.workdir)
        self.engine.record_exec = self._record_exec  # type: ignore[method-assign]
        self.admin_token = token or secrets.token_urlsafe(24)
        self.token = self.admin_token  # controls; and the first session's token
        self.sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self.default_session = self.new_session(self.workdir, token=self.admin_token)
        self.log = QueryLog()
        self.faults: list[FaultRule] = []
        self._faults_lock = threading.Lock()
        self.schema = schema_mod.schema()
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> TestEngine:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def env(self) -> dict[str, str]:
        """How the SDK reaches the default session (as under ``dagger run``); if a
        dropped connection ended it, a new default session is started first."""
        if not self.default_session.alive:
            self.renew_default_session()
        return {
            "DAGGER_SESSION_PORT": str(self.port),
            "DAGGER_SESSION_TOKEN": self.default_session.token,
        }

    # -- sessions
    def new_session(
        self, workdir: Path | str | None = None, *, labels=(), token: str | None = None
    ) -> Session:
        """A new client session of this engine (what ``dagger session`` starts)."""
        session = Session(
            token=token or secrets.token_urlsafe(24),
            workdir=Path(os.path.abspath(workdir or self.workdir)),
            labels=tuple(labels),
        )
        with self._sessions_lock:
            self.sessions[session.token] = session
        return session

    def end_session(self, session: Session) -> None:
        """The session is gone: its token stops working, its state is dropped."""
        with self._sessions_lock:
            session.alive = False
            session.cache.clear()

    def renew_default_session(self) -> Session:
        """End the default session and start another one (a new ``dagger run``)."""
        old = self.default_session
        self.default_session = self.new_session(self.workdir)
        self.end_session(old)
        return self.default_session

    def live_sessions(self) -> list[Session]:
        with self._sessions_lock:
            return [s for s in self.sessions.values() if s.alive]

    # -- controls
    def add_fault(self, field: str, kind: str, *, nth: int = 1, times: int = 1, **extra) -> None:
        if kind not in ("exec", "error", "http500", "drop"):
            raise ValueError(f"unknown fault kind {kind!r}")
        message = extra.pop("message", f"injected {kind} fault on {field}")
        with self._faults_lock:
            self.faults.append(FaultRule(field, kind, nth, times, message, extra=extra))

    def clear_faults(self) -> None:
        with self._faults_lock:
            self.faults.clear()

    def _check_faults(self, name: str) -> None:
        with self._faults_lock:
            for rule in self.faults:
                if rule.field != name or rule.fired >= rule.times:
                    continue
                rule.seen += 1
                if rule.seen < rule.nth:
                    continue
                rule.fired += 1
                if rule.kind == "exec":
                    cmd = rule.extra.get("cmd", ["injected"])
                    raise ExecError(cmd, int(rule.extra.get("exit_code", 1)), "", rule.message)
                if rule.kind == "error":
                    raise EngineError(rule.message)
                raise HTTPFault(rule.kind, rule.message)

    def _record_exec(self, args: list[str]) -> None:
        self.log.add_exec(args)
        self._check_faults("exec")

    # -- GraphQL
    def resolve(self, parent: Any, info, **args: Any) -> Any:
        name = f"{info.parent_type.name}.{info.field_name}"
        if not info.field_name.startswith("__"):
            self.log.add_call(name)
            self._check_faults(name)
        if isinstance(parent, dict):
            return parent.get(info.field_name)
        if not isinstance(parent, Obj):
            return getattr(parent, info.field_name, None)
        method = getattr(parent, "f_" + info.field_name, None)
        if method is None:
            raise EngineError(f"{name} is not implemented by the dagger test engine")
        return method(**args)

    def run_query(
        self, query: str, variables: dict | None = None, session: Session | None = None
    ) -> dict[str, Any]:
        session = session or self.default_session
        try:
            doc = parse(query)
        except GraphQLError as e:
            return {"data": None, "errors": [e.formatted]}
        self.log.add_request(field_paths(doc), session.id)
        errors = validate(self.schema, doc)
        if errors:
            return {"data": None, "errors": [e.formatted for e in errors]}
        refused = refusal(doc)  # what the SDK knows but the real engine has not got
        if refused is not None:
            return {"data": None, "errors": [{"message": refused}]}
        ctx = set_current(session)
        try:
            result = execute(
                self.schema,
                doc,
                root_value=self.engine.root,
                variable_values=variables,
                field_resolver=self.resolve,
                type_resolver=lambda value, _info, _t: value.TYPENAME,
            )
        finally:
            reset_current(ctx)
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            for err in result.errors:
                if isinstance(err.original_error, HTTPFault):
                    raise err.original_error
            out["errors"] = [e.formatted for e in result.errors]
        return out


def _make_handler(te: TestEngine):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Go's net/http, which serves the real engine, sets TCP_NODELAY on every
        # connection (Go's net package default) and writes a response's header and
        # body together. Python's defaults (Nagle on, an unbuffered writer that
        # sends the header and the body apart) would add a delayed-ACK wait of
        # about 40 ms to each answer that the real engine does not have.
        disable_nagle_algorithm = True
        wbufsize = 1 << 16

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _user(self) -> str:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return ""
            try:
                return base64.b64decode(header[6:]).decode().split(":", 1)[0]
            except ValueError:
                return ""

        def _authorized(self) -> bool:
            """The admin token, for the /_test/ controls."""
            return secrets.compare_digest(self._user(), te.admin_token)

        def _hang_up(self) -> None:
            """Close the connection without an answer: the session is gone."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _send(self, code: int, body: dict[str, Any] | str) -> None:
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            return json.loads(raw or b"{}")

        def do_GET(self) -> None:
            if not self._authorized():
                return self._send(401, {"error": "unauthorized"})
            if self.path == "/_test/log":
                return self._send(200, te.log.snapshot())
            if self.path == "/_test/info":
                return self._send(200, {"go": te.engine.go_version(), "version": te.engine.version})
            if self.path == "/_test/published":
                pubs = [p.__dict__ for p in te.engine.images.published]
                return self._send(200, {"published": pubs})
            if self.path == "/_test/sessions":
                return self._send(200, {"sessions": [_describe(s) for s in te.live_sessions()]})
            return self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path == "/query":
                return self._query()
            if not self._authorized():
                return self._send(401, {"error": "unauthorized"})
            try:
                body = self._body()
            except ValueError:
                return self._send(400, {"error": "invalid JSON"})
            if self.path == "/_test/sessions":
                session = te.new_session(body.get("workdir"), labels=body.get("labels") or ())
                return self._send(
                    200,
                    {"port": te.port, "session_token": session.token, **_describe(session)},
                )
            if self.path == "/_test/sessions/end":
                ended = te.sessions.get(str(body.get("session_token", "")))
                if ended is None:
                    return self._send(404, {"error": "no such session"})
                te.end_session(ended)
                return self._send(200, {"ok": True})
            if self.path == "/_test/faults":
                try:
                    te.add_fault(**body)
                except (TypeError, ValueError) as e:
                    return self._send(400, {"error": str(e)})
                return self._send(200, {"ok": True})
            if self.path == "/_test/reset":
                te.clear_faults()
                te.log.clear()
                return self._send(200, {"ok": True})
            return self._send(404, {"error": "not found"})

        def _query(self) -> None:
            try:
                body = self._body()
            except ValueError:
                body = None
            session = te.sessions.get(self._user())
            if session is None:
                return self._send(401, {"error": "unauthorized"})
            if not session.alive:
                return self._hang_up()
            if body is None:
                return self._send(400, {"error": "invalid JSON"})
            try:
                with serving(self._client_gone):
                    result = te.run_query(body.get("query", ""), body.get("variables"), session)
            except HTTPFault as fault:
                if fault.kind == "drop":
                    te.end_session(session)  # a real session does not survive its connection
                    return self._hang_up()
                return self._send(500, fault.args[0])
            if not session.alive or self._client_gone():  # ended while this request ran
                return self._hang_up()
            return self._send(200, result)

        def _client_gone(self) -> bool:
            """Whether the client closed this connection (what ends the engine's
            request context): it reads as ready, with nothing in it but the end of
            the stream. The SDK sends no second request on a connection before the
            first is answered, so nothing else could be waiting in it."""
            try:
                ready, _, _ = select.select([self.connection], [], [], 0)
                return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                return True

    return Handler


def _describe(session: Session) -> dict[str, Any]:
    """A session for the controls (never its token)."""
    return {
        "id": session.id,
        "workdir": str(session.workdir),
        "labels": list(session.labels),
        "alive": session.alive,
    }
