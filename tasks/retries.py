"""Which failures a retry can fix, and the retry options of every stage.

Retry layer: Prefect, not the SDK. The SDK's transport retries (gql + tenacity,
about 15 s over 5 attempts) are switched off with ``Config(retry=None)``: they
would retry compile errors' neighbours blindly, hide the attempt count from the
Prefect UI, and multiply with task retries. Prefect's task retries see the
exception, ask :func:`is_transient`, and back off exponentially with jitter. A
retry after a lost connection also needs a new engine session, which
:func:`retry_transient` asks of the run's :class:`tasks.session.EngineScope`.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from prefect.tasks import exponential_backoff

from tasks.preflight import EngineUnavailable
from tasks.sdk import is_error, is_exec_error
from tasks.session import current_scope

if TYPE_CHECKING:
    import dagger

# Registry and transport failures a retry can fix. Matched on the engine's
# message, because the engine reports registry responses as text.
_TRANSIENT = re.compile(
    r"\b(5\d\d|429)\b|too many requests|service unavailable|bad gateway|gateway timeout"
    r"|internal server error|timed? ?out|timeout|connection (reset|refused|closed|aborted)"
    r"|broken pipe|eof|temporar(y|ily)|unavailable|try again",
    re.IGNORECASE,
)
# Failures a retry cannot fix, even when their text also matches the above.
_DETERMINISTIC = re.compile(
    r"\b(401|403)\b|unauthori[sz]ed|denied|forbidden|authentication required"
    r"|invalid reference|manifest unknown|name unknown|not found",
    re.IGNORECASE,
)

# A failed `go` command is worth a retry only when it failed fetching modules over
# the network. Texts as the go command prints them (cmd/go/internal/web, modfetch,
# net/http, and git for GOPROXY=direct), matched on stderr: `go` writes its own
# messages there, while `go test` sends the tests' output to stdout.
_GO_NETWORK = re.compile(
    r"(?-i:\b(?:50[0-4]|429) [A-Z][a-z])"  # reading https://proxy…/@v/v1.zip: 502 Bad Gateway
    r"|i/o timeout|TLS handshake timeout|context deadline exceeded|Client\.Timeout exceeded"
    r"|timeout awaiting response headers|no such host|server misbehaving"
    r"|temporary failure in name resolution|connection (?:reset by peer|refused|timed out)"
    r"|broken pipe|network is unreachable|no route to host|unexpected EOF|: EOF$"
    r"|server sent GOAWAY|could not resolve host|failed to connect to|early EOF"
    r"|The requested URL returned error: 5\d\d",
    re.IGNORECASE | re.MULTILINE,
)
# Where a module fetch shows in a line: the URL or module@version go was reading.
_GO_FETCH_LINE = re.compile(
    r'Get "https?://|reading https?://|/@v/|/@latest\b|proxy\.golang\.org|sum\.golang\.org'
    r"|\S@v\d[^\s:]*: |git (?:ls-remote|fetch)|fatal: unable to access"
)
# Module failures a retry cannot fix, even next to a network error: a retry would
# only fail again (or must not pass: a checksum mismatch is a security error).
# Not "invalid version" itself: go wraps git's network failures in it too.
_GO_DETERMINISTIC = re.compile(
    r"checksum mismatch|SECURITY ERROR|(?-i:\b40[134] [A-Z][a-z])|\b410 Gone|unknown revision"
    r"|module lookup disabled|terminal prompts disabled"
    r"|could not read (?:Username|Password)|Authentication failed|Permission denied \(publickey"
    r"|The requested URL returned error: 4\d\d|no matching versions|missing go\.sum entry"
    r"|updates to go\.mod needed|malformed module path|module declares its path as",
    re.IGNORECASE,
)
# A compiler or vet diagnostic (`./main.go:20:1: syntax error: unexpected EOF`).
_GO_DIAGNOSTIC = re.compile(r"^\s*\S+\.(?:go|mod|sum|work|s):\d+(?::\d+)?: ")


def lost_connection(exc: BaseException) -> bool:
    """True when the engine session itself is gone, not just one request."""
    return isinstance(exc, ConnectionError) or is_error(
        exc, "TransportError", "ClientConnectionError"
    )


def _go_module_fetch_flaked(exc: dagger.ExecError) -> bool:
    """True when a ``go`` command failed only because fetching modules hit the
    network (proxy 5xx, timeouts, DNS, resets), so the same command may pass later.

    The failure must be a fetch: the command is ``go mod download``, or the failing
    line names what go was reading (a proxy URL, ``module@version:``), or go said it
    was downloading and the line is not a compiler diagnostic. Anything that a
    retry cannot fix (checksum mismatch, 404/410, unknown revision, GOPROXY=off,
    auth, a compile or vet error) anywhere in stderr makes the whole failure final.
    """
    command = [str(arg) for arg in exc.command]
    if not command or os.path.basename(command[0]) != "go":
        return False
    mod_download = command[1:3] == ["mod", "download"]
    lines = exc.stderr.splitlines()
    downloading = mod_download or any(line.startswith("go: downloading ") for line in lines)
    if _GO_DETERMINISTIC.search(exc.stderr):
        return False
    flaked = False
    for line in lines:
        fetch_line = bool(_GO_FETCH_LINE.search(line))
        if _GO_DIAGNOSTIC.match(line) and not fetch_line:
            return False  # the code itself is wrong
        if _GO_NETWORK.search(line) and (fetch_line or downloading):
            flaked = True
    return flaked


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on a second attempt."""
    if is_exec_error(exc):
        return _go_module_fetch_flaked(exc)
    if isinstance(exc, EngineUnavailable | ValueError):
        return False
    text = str(exc)
    if lost_connection(exc):
        return not _DETERMINISTIC.search(text)
    if isinstance(exc, TimeoutError):
        return True
    if is_error(exc, "QueryError"):
        return bool(_TRANSIENT.search(text)) and not _DETERMINISTIC.search(text)
    return False


async def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only what :func:`is_transient` allows."""
    exc = await state.aresult(raise_on_failure=False)
    if not (isinstance(exc, BaseException) and is_transient(exc)):
        return False
    scope = current_scope()
    if scope is not None and lost_connection(exc):
        scope.lost = True
    return True


def retry_options() -> dict:
    """The task options of every stage that talks to an engine or registry.

    Three retries with exponential backoff (base ``GOBUILD_RETRY_BASE_SECONDS``,
    default 2 s: 2, 4, 8 s) and 50 % jitter, so that builds that failed together
    on a busy registry do not come back together.
    """
    base = float(os.environ.get("GOBUILD_RETRY_BASE_SECONDS", "2"))
    return {
        "retries": 3,
        "retry_delay_seconds": exponential_backoff(backoff_factor=base),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_transient,
    }
