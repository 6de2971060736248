"""Client sessions of the Dagger test engine.

One real engine serves many sessions: each ``dagger session`` (or ``dagger run``)
is a client with its own token, its own working directory (relative host paths
resolve against it: the CLI ``chdir``s to ``--workdir``, ``cmd/dagger/main.go``
~244-250) and its own registry credentials (``withRegistryAuth`` writes to the
session's auth provider, ``core/schema/container.go`` ~3998-4028, keyed by
registry host as ``auth/registry.go`` parses it). Caches, blobs and built
results belong to the engine and are shared by all sessions.

The session serving the current request is a context variable, set by the
server around each query, so resolvers deep in the engine can find it.
"""

from __future__ import annotations

import contextvars
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DOCKER_DOMAIN = "docker.io"


class AuthAddressError(ValueError):
    pass


def parse_auth_address(address: str) -> str:
    """The registry host credentials for ``address`` are stored under
    (``auth/registry.go`` ``parseAuthAddress``)."""
    address = address.removeprefix("http://").removeprefix("https://").removesuffix("/")
    address = address.split("@", 1)[0]
    if address.count(":") > 1:
        address = address[: address.rindex(":")]
    if ":" in address:
        tail = address[address.rindex(":") :]
        if "." in tail:  # a tag such as :1.4
            address = address[: address.rindex(":")]
    domain = address.split("/", 1)[0]
    port_str = domain[domain.rfind(":") + 1 :]
    try:
        port = int(port_str)
    except ValueError:
        port = 0
    if "localhost" in domain:
        return domain
    if len(address) >= 1 and ":" in domain and port > 0:
        return domain
    if len(address) == 1 and "." not in domain:
        return DEFAULT_DOCKER_DOMAIN
    if "." not in address and ":" not in address:
        return DEFAULT_DOCKER_DOMAIN
    if "docker.io" in address:
        return DEFAULT_DOCKER_DOMAIN
    if "." in domain:
        return domain
    raise AuthAddressError(
        f"failed parsing [{domain}], expected address format: [registrydomain.extension]"
    )


class RegistryAuth:
    """A session's registry credentials: host -> (username, secret)."""

    def __init__(self) -> None:
        self._creds: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def add(self, address: str, username: str, secret: str) -> None:
        host = parse_auth_address(address)
        with self._lock:
            self._creds[host] = (username, secret)

    def remove(self, address: str) -> None:
        host = parse_auth_address(address)
        with self._lock:
            self._creds.pop(host, None)

    def lookup(self, host: str) -> tuple[str, str] | None:
        if host in ("registry-1.docker.io", "index.docker.io"):
            host = DEFAULT_DOCKER_DOMAIN
        with self._lock:
            return self._creds.get(host)


@dataclass
class Session:
    token: str
    workdir: Path
    labels: tuple[str, ...] = ()
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    alive: bool = True
    registry_auth: RegistryAuth = field(default_factory=RegistryAuth)
    # setSecret values by handle (dagql/cache.go BindSessionResource: per session,
    # the latest binding wins)
    secret_values: dict[str, str] = field(default_factory=dict)
    # per-session caches (git ls-remote results: git() is a per-client call)
    cache: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cached(self, key: str, make):
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        value = make()
        with self.lock:
            return self.cache.setdefault(key, value)


_CURRENT: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "dagger_test_engine_session", default=None
)


def current_session() -> Session | None:
    return _CURRENT.get()


def set_current(session: Session | None) -> contextvars.Token:
    return _CURRENT.set(session)


def reset_current(token: contextvars.Token) -> None:
    _CURRENT.reset(token)
