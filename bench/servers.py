"""The Prefect API the benchmark talks to: the local API server as
``python -m flows.build`` runs it (``flows/local_api.py``), over a SQLite
database of its own, started once and stopped at the end.

Prefect's own test harness (``prefect_test_harness``) would serve Prefect's
server as it is: on SQLite, a flow run that starts while the server still
records the last one's events waits 2 s or more for the client's back-off
(section 9 measures it), and those waits would land on whichever side of a
comparison happened to start then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def local_server(home: Path, shipped: bool = True) -> Iterator[tuple[str, Path]]:
    """A local API server over its own ``PREFECT_HOME``, started and stopped as the
    command line does it (``shipped=False``: Prefect's server as it is): -> (API URL,
    its log)."""
    from flows.local_api import LOG_FILE, _start, _terminate

    home.mkdir(parents=True, exist_ok=True)
    state = _start(home, shipped=shipped)
    try:
        yield state.api_url, home / LOG_FILE
    finally:
        _terminate(state)
