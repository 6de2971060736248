"""How a run started from the command line talks to the Prefect API: one shared
synchronous client, and no CA bundle read for an API that is plain HTTP.

Every Prefect client Prefect makes (the run's own, the log and event workers',
the version check's, the engine slot's lease service's) builds an SSL context
from ``PREFECT_API_SSL_CERT_FILE``, or else certifi's bundle of about 150 root
certificates: ~50 ms of CPU each on the benchmark machine, six times in a
command-line build, even when the API is ``http://127.0.0.1`` and no TLS
handshake ever happens. Python's ``ssl`` module reads a one-certificate file in
about 1 ms.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PLAIN_HTTP_CA_FILE = "gobuild-plain-http-ca.pem"
_PEM_END = "-----END CERTIFICATE-----"
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class PrefectAPIUnavailable(Exception):
    """The Prefect API does not answer, or answers with a version this Prefect
    cannot talk to."""


@contextlib.contextmanager
def shared_prefect_client() -> Iterator[None]:
    """One synchronous Prefect client for the whole run (``SyncClientContext``,
    Prefect's own way to share it). Without it Prefect makes a new one each time
    it reads the server's default result storage (twice a run) and for the thread
    that renews the engine slot's lease (which copies the context, so it finds
    this one), and each new client builds an SSL context.

    Entering it asks the API its version, so an API that does not answer is one
    line (:class:`PrefectAPIUnavailable`) before the run starts, not a traceback."""
    from prefect.context import SyncClientContext

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(SyncClientContext.get_or_create())
        except RuntimeError as exc:  # Prefect: "Failed to reach API at ..." or a version mismatch
            raise PrefectAPIUnavailable(str(exc)) from None
        yield


@contextlib.contextmanager
def no_ca_bundle_for_plain_http() -> Iterator[None]:
    """While the API in effect is plain HTTP (``http://``, or none set, so
    Prefect's temporary server on 127.0.0.1), point ``PREFECT_API_SSL_CERT_FILE``
    at a file holding one certificate, so each client Prefect makes skips reading
    the whole bundle. Nothing is weakened: over ``http://`` the context is never
    used (Prefect's client does not follow redirects), and a context trusting one
    root only could refuse a TLS server, never accept one it should not.

    A CA file the environment names (``PREFECT_API_SSL_CERT_FILE``, or
    ``SSL_CERT_FILE``, its default) is replaced too, for this run's clients only:
    it costs as much to read and is as unused over ``http://``. Left alone: an
    ``https://`` API, and a proxy set in the environment (an ``https://`` proxy
    would be reached over TLS with that context)."""
    from prefect.settings import (
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_URL,
        PREFECT_HOME,
        temporary_settings,
    )

    url = PREFECT_API_URL.value() or ""
    proxied = any(os.environ.get(name) for name in PROXY_VARIABLES)
    plain = _plain_http(url) and not proxied
    ca_file = one_certificate_file(PREFECT_HOME.value()) if plain else None
    if ca_file is None:
        yield
        return
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(ca_file)}):
        yield


def _plain_http(url: str) -> bool:
    return url == "" or url.lower().startswith("http://")


def one_certificate_file(home: Path) -> Path | None:
    """The first certificate of certifi's bundle in a file of its own under
    ``PREFECT_HOME``, written once (atomically, so builds started at once never
    read half a file); ``None`` when it cannot be written, and the run reads the
    bundle as Prefect would."""
    import certifi

    path = home / PLAIN_HTTP_CA_FILE
    try:
        if path.is_file() and path.read_text().rstrip().endswith(_PEM_END):
            return path
        bundle = Path(certifi.where()).read_text()
        first = bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(_PEM_END)]
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=home, prefix=f".{PLAIN_HTTP_CA_FILE}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(first + _PEM_END + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, ValueError):
        return None
    return path
