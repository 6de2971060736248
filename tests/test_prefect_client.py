"""A run the command line starts does not make Prefect read certifi's whole CA
bundle for each client when the API is plain HTTP (``flows/prefect_client.py``),
and leaves TLS alone everywhere it could matter."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path
from typing import Any

import certifi
import pytest

from tests.dagger_test_engine.server import TestEngine
from tests.prefect_fixtures import PrefectAPI


def _cert_file_inside(
    url: str | None, home: Path, more: dict[Any, Any] | None = None
) -> str | None:
    from prefect.settings import (
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_URL,
        PREFECT_HOME,
        temporary_settings,
    )

    from flows.prefect_client import no_ca_bundle_for_plain_http

    settings = {PREFECT_API_URL: url, PREFECT_HOME: home, **(more or {})}
    with temporary_settings(settings), no_ca_bundle_for_plain_http():
        return PREFECT_API_SSL_CERT_FILE.value()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.prefect_client import PROXY_VARIABLES

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_proxy")
@pytest.mark.parametrize("url", ["http://127.0.0.1:4200/api", "HTTP://prefect.internal/api", None])
def test_a_plain_http_api_gets_a_one_certificate_file_that_ssl_loads(
    url: str | None, tmp_path: Path
) -> None:
    chosen = _cert_file_inside(url, tmp_path)
    assert chosen == str(tmp_path / "gobuild-plain-http-ca.pem")
    text = Path(chosen).read_text()
    assert text.count("BEGIN CERTIFICATE") == 1
    assert text in Path(certifi.where()).read_text()  # a certificate certifi already trusts
    ctx = ssl.create_default_context(cafile=chosen)
    assert ctx.cert_store_stats()["x509_ca"] == 1
    assert _cert_file_inside(url, tmp_path) == chosen  # written once, then reused


@pytest.mark.usefixtures("no_proxy")
def test_tls_is_left_to_prefect_where_it_could_matter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https API, an unwritable home and a proxy keep Prefect's own choice; a
    CA file the environment names is replaced over http for the run only."""
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, temporary_settings

    plain = "http://127.0.0.1:4200/api"
    cloud = "https://api.prefect.cloud/api/accounts/a/workspaces/w"
    mine = str(tmp_path / "corporate-ca.pem")
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: mine}):
        assert _cert_file_inside(cloud, tmp_path) == mine
        assert _cert_file_inside(plain, tmp_path) == str(tmp_path / "gobuild-plain-http-ca.pem")
        assert PREFECT_API_SSL_CERT_FILE.value() == mine  # given back after the run
    unwritable = tmp_path / "not-a-directory"
    unwritable.write_text("")
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: None}):
        assert _cert_file_inside(plain, unwritable) is None  # then as Prefect reads it
        monkeypatch.setenv("HTTP_PROXY", "https://proxy.internal:3128")
        assert _cert_file_inside(plain, tmp_path) is None
    assert not list(tmp_path.glob(".gobuild-plain-http-ca.pem.*"))  # no temporary file left


def test_a_run_started_as_the_command_line_starts_it_reads_no_ca_bundle_for_prefect(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: None,
) -> None:
    """Every SSL context Prefect's own modules make during the run trusts the
    one-certificate file; the Dagger client's (httpx's) still reads certifi."""
    from flows.build import run_build
    from tasks.params import parse_params

    made: list[tuple[str, str | None]] = []
    create = ssl.create_default_context

    def recording(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append((sys._getframe(1).f_globals.get("__name__", ""), kwargs.get("cafile")))
        return create(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", recording)
    values = {
        "source": str(hello_go),
        "version": "8.4.0",
        "output": str(tmp_path / "no-bundle.tar"),
        "run_checks": False,
        "force_rebuild": True,
    }
    state = asyncio.run(run_build(values, parse_params(values)))
    assert state.is_completed(), state.message
    prefects = [cafile for module, cafile in made if module.startswith("prefect.")]
    assert prefects, made  # the run's own async client, at least
    assert all(c and c.endswith("gobuild-plain-http-ca.pem") for c in prefects), made
