"""Real OCI registries for tests: Debian's ``docker-registry`` (CNCF distribution).

Two per test session on 127.0.0.1 with ephemeral ports: one open, one behind
htpasswd auth. ``FaultProxy`` sits in front of a registry and answers the first N
requests with a 503, a 429 with Retry-After, or a connection reset, so retries are
proven against a registry that misbehaves the way real ones do.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import secrets
import shutil
import socket
import struct
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.oci_check import skopeo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT"
    username: str = ""
    password: str = ""
    process: subprocess.Popen | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username else None

    def tags(self, repo: str) -> list[str]:
        r = httpx.get(f"http://{self.host}/v2/{repo}/tags/list", auth=self.auth)
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return sorted(r.json().get("tags") or [])

    def manifest(self, repo: str, ref: str) -> tuple[str, dict]:
        accept = ", ".join(
            [
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
            ]
        )
        r = httpx.get(
            f"http://{self.host}/v2/{repo}/manifests/{ref}",
            auth=self.auth,
            headers={"Accept": accept},
        )
        r.raise_for_status()
        return r.headers["Docker-Content-Digest"], r.json()


def start_registry(root: Path, *, username: str = "", password: str = "") -> Registry:
    binary = shutil.which("docker-registry")
    if not binary:
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    port = free_port()
    auth = ""
    if username:
        import bcrypt

        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        (root / "htpasswd").write_text(f"{username}:{hashed}\n")
        auth = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {root / 'htpasswd'}\n"
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n"
        "    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(8)}\n" + auth
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "registry.log", "wb"),  # noqa: SIM115 - lives as long as the registry
    )
    reg = Registry(f"127.0.0.1:{port}", username, password, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://{reg.host}/v2/", timeout=1).status_code in (200, 401):
                return reg
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()}")


def stop_registry(reg: Registry) -> None:
    if reg.process and reg.process.poll() is None:
        reg.process.terminate()
        try:
            reg.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            reg.process.kill()


def forward(handler: BaseHTTPRequestHandler, upstream: str, body: bytes) -> None:
    """Send the request ``handler`` received on to ``upstream`` and its answer back:
    the pass-through of the test proxies that stand between the engine and a
    registry."""
    headers = {k: v for k, v in handler.headers.items() if k.lower() != "content-length"}
    r = httpx.request(
        handler.command,
        f"http://{upstream}{handler.path}",
        headers=headers,
        content=body,
        timeout=30,
    )
    handler.send_response(r.status_code)
    for k, v in r.headers.items():
        if k.lower() not in ("content-length", "transfer-encoding", "connection"):
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(r.content)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(r.content)


@dataclass
class FaultProxy:
    """HTTP proxy in front of a registry that fails the first ``count`` requests.

    ``kind``: "503", "429" (with Retry-After: 1) or "reset" (connection closed
    without a response).
    """

    upstream: str
    kind: str = "503"
    count: int = 0
    host: str = ""
    seen: int = 0
    failed: int = 0
    requests: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def arm(self, kind: str, count: int) -> None:
        self.kind, self.count, self.failed = kind, count, 0

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.seen += 1
                proxy.requests.append(f"{self.command} {self.path}")
                if proxy.failed < proxy.count:
                    proxy.failed += 1
                    if proxy.kind == "reset":
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            linger = struct.pack("ii", 1, 0)  # RST instead of FIN
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        self.connection.close()
                        return
                    code = 429 if proxy.kind == "429" else 503
                    self.send_response(code)
                    if code == 429:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                forward(self, proxy.upstream, body)

            do_GET = do_PUT = do_POST = do_HEAD = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("registry-open"))
    yield reg
    stop_registry(reg)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(
        tmp_path_factory.mktemp("registry-auth"),
        username="ci-pusher",
        password="pw-" + secrets.token_urlsafe(18),
    )
    yield reg
    stop_registry(reg)


@pytest.fixture
def fault_proxy(registry: Registry) -> Iterator[FaultProxy]:
    proxy = FaultProxy(registry.host).start()
    yield proxy
    proxy.stop()


def push_base(
    registry: Registry,
    name: str,
    config: dict,
    tmp_path: Path,
    platforms: tuple[str, ...] = ("linux/amd64",),
) -> str:
    """A one-layer image with ``config`` at ``registry``/mirror/``name``: one
    manifest for one platform, an image index for several (each platform's
    config saying which it is, in ``PLATFORM``), pushed with skopeo (not the test
    engine) from an OCI layout written here."""
    layout = tmp_path / f"layout-{name.replace(':', '-')}"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("etc/mirror")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"corp\n"))
    layer_desc = blob(layer.getvalue())
    manifests = []
    for platform in platforms:
        os_, arch = platform.split("/")[:2]
        env = [*config.get("Env", []), f"PLATFORM={platform}"]
        image_config = {
            "architecture": arch,
            "os": os_,
            "config": {**config, "Env": env},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **blob(json.dumps(image_config).encode()),
            },
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
        }
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **blob(json.dumps(manifest).encode()),
                "platform": {"os": os_, "architecture": arch},
            }
        )
    top: dict = {k: v for k, v in manifests[0].items() if k != "platform"}
    if len(manifests) > 1:
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }
        top = {"mediaType": index["mediaType"], **blob(json.dumps(index).encode())}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    ref = f"{registry.host}/mirror/{name}"
    creds = f"{registry.username}:{registry.password}"
    every = ["--all"] if len(manifests) > 1 else []
    skopeo(
        "copy",
        *every,
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        f"oci:{layout}",
        f"docker://{ref}",
    )
    return ref
