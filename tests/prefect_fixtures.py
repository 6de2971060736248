"""A real Prefect API for tests: one temporary server and result store per session.

``prefect_test_harness`` gives a fresh database but not fresh result storage, so
the storage path is pointed at a temporary directory too: cache hits must come
from this test session, never from an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class PrefectAPI:
    url: str
    results: Path

    @property
    def env(self) -> dict[str, str]:
        """For subprocesses (CLI runs) that should use this API and result store."""
        return {
            "PREFECT_API_URL": self.url,
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.results),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectAPI]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}),
        prefect_test_harness(server_startup_timeout=180),
    ):
        yield PrefectAPI(url=str(PREFECT_API_URL.value()), results=results)
