"""Real git servers on 127.0.0.1 for tests: ``git daemon`` and smart HTTP.

The Dagger engine fetches git sources itself and only over the network
(``http``, ``https``, ``ssh``, ``git``; never ``file://``), so tests that give the
engine a repository serve it the way a forge would:

* ``GitDaemon``: ``git daemon --export-all --base-path`` on ``git://127.0.0.1:PORT/…``;
* ``GitHTTPServer``: ``git http-backend`` (CGI) behind a small ``http.server``,
  optionally requiring HTTP Basic auth with a token. Its request log holds the
  method, path, status and user only: never a header, so never the token.

Repositories are added with ``server.add_repo(name, source_dir)``, which pushes
every branch and tag of a local repository (made with ``tests/gitrepo.py``) to
a bare repository the server exports, and sets its HEAD to the source's
current branch. ``server.url(name)`` is what to hand to ``dag.git``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.gitrepo import git as git_in
from tests.registry_fixtures import free_port

TOKEN_USERNAME = "x-access-token"  # the engine's default Basic-auth username for a token


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


class _Repos:
    """Bare repositories under ``base``, filled by pushing local ones."""

    scheme = ""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)

    @property
    def port(self) -> int:
        raise NotImplementedError

    def url(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"

    def add_repo(self, name: str, source: Path) -> str:
        """Push all branches and tags of the local repository ``source`` to the
        bare repository ``name`` (created if needed); -> its URL."""
        bare = self.base / name
        if not (bare / "HEAD").exists():
            bare.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, env=_git_env())
        git_in(source, "push", "-q", "--force", str(bare), "refs/heads/*:refs/heads/*")
        git_in(source, "push", "-q", "--force", str(bare), "refs/tags/*:refs/tags/*")
        branch = git_in(source, "symbolic-ref", "-q", "HEAD")
        if branch:
            subprocess.run(
                ["git", "--git-dir", str(bare), "symbolic-ref", "HEAD", branch],
                check=True,
                env=_git_env(),
            )
        return self.url(name)

    def remove_repo(self, name: str) -> None:
        shutil.rmtree(self.base / name, ignore_errors=True)


class GitDaemon(_Repos):
    """``git daemon`` serving every repository under ``base`` read-only."""

    scheme = "git"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self._port = free_port()
        self.log = base.parent / f"git-daemon-{self._port}.log"
        self._log_fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                f"--base-path={base}",
                "--listen=127.0.0.1",
                f"--port={self._port}",
                "--informative-errors",
                str(base),
            ],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=_git_env(),
        )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"git daemon exited: {self.log.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self._port), timeout=0.5),
            ):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("git daemon did not start listening")
            time.sleep(0.05)

    @property
    def port(self) -> int:
        return self._port

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()


class GitHTTPServer(_Repos):
    """Smart HTTP (``git http-backend``), with Basic auth when ``token`` is set:
    user ``username`` and password ``token``."""

    scheme = "http"

    def __init__(self, base: Path, *, token: str = "", username: str = TOKEN_USERNAME) -> None:
        super().__init__(base)
        self.token = token
        self.username = username if token else ""
        self.requests: list[tuple[str, str, int, str]] = []  # method, path, status, user
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _cgi_handler(self))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def authorized(self, header: str) -> str | None:
        """The user of a valid Authorization header; "" when no auth is needed;
        None when it is refused."""
        if not self.token:
            return ""
        if header[:6].lower() != "basic ":  # the scheme is case-insensitive
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        ok_user = secrets.compare_digest(user, self.username)
        ok_password = secrets.compare_digest(password, self.token)
        return user if ok_user and ok_password else None

    def record(self, method: str, path: str, status: int, user: str) -> None:
        with self._lock:
            self.requests.append((method, path, status, user))

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(" ".join(map(str, r)) for r in self.requests)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _cgi_handler(server: GitHTTPServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:
            pass  # the default logs to stderr; ``server.requests`` is the log

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            body = self._body() if self.command == "POST" else b""
            path = urlsplit(self.path).path
            user = server.authorized(self.headers.get("Authorization", ""))
            if user is None:
                server.record(self.command, path, 401, "")
                return self._reply(
                    401, [("WWW-Authenticate", 'Basic realm="git"')], b"authentication required\n"
                )
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(server.base),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": urlsplit(self.path).query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
                "SERVER_PROTOCOL": "HTTP/1.1",
                "GATEWAY_INTERFACE": "CGI/1.1",
            }
            if user:
                env["REMOTE_USER"] = user
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            proc = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
            )
            head, _, payload = proc.stdout.partition(b"\r\n\r\n")
            if not _ and b"\n\n" in proc.stdout:
                head, _, payload = proc.stdout.partition(b"\n\n")
            status = 200
            headers: list[tuple[str, str]] = []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name.strip(), value.strip()))
            if proc.returncode != 0 and not head:
                status, headers, payload = 500, [], b"git http-backend failed\n"
            server.record(self.command, path, status, user)
            self._reply(status, headers, payload)

        do_GET = _handle
        do_POST = _handle

    return Handler


@pytest.fixture(scope="session")
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    """``git://127.0.0.1:PORT/<name>``: ``.url(name)``, ``.add_repo(name, src)``."""
    server = GitDaemon(tmp_path_factory.mktemp("git-daemon") / "repos")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def git_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHTTPServer]:
    """Smart HTTP without auth: ``http://127.0.0.1:PORT/<name>``."""
    server = GitHTTPServer(tmp_path_factory.mktemp("git-http") / "repos")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def git_http_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHTTPServer]:
    """Smart HTTP requiring Basic auth: ``.username`` (``x-access-token``, the
    engine's default) and ``.token``."""
    server = GitHTTPServer(
        tmp_path_factory.mktemp("git-http-auth") / "repos", token="tok-" + secrets.token_hex(16)
    )
    yield server
    server.stop()
