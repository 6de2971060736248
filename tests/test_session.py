"""Which failures are retried, and how a missing engine is explained."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import types
from pathlib import Path

import dagger
import pytest
from dagger._exceptions import QueryErrorValue

from tasks.preflight import PREFLIGHT_TIMEOUT_DEFAULT, EngineUnavailable, preflight
from tasks.retries import is_transient

REQUEST = types.SimpleNamespace(document=None)


def query_error(message: str, **extensions) -> dagger.QueryError:
    return dagger.QueryError([QueryErrorValue(message, extensions=extensions)], REQUEST)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (dagger.TransportError("Unexpected response from engine: 500"), True),
        (query_error("failed to push r:1: unexpected status: 503 Service Unavailable"), True),
        (query_error("failed to push r:1: 429 Too Many Requests (Retry-After: 1)"), True),
        (query_error("failed to do request: ConnectError: connection refused"), True),
        (query_error("failed to push: read: connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (query_error("failed to push r:1: authorization failed: 401 Unauthorized"), False),
        (query_error("failed to push r:1: 403 Forbidden: denied"), False),
        (query_error("address: invalid reference format: 'Bad Ref'"), False),
        (
            query_error(
                "process did not complete",
                _type="EXEC_ERROR",
                cmd=["go", "build"],
                exitCode=1,
                stdout="",
                stderr="undefined: x",
            ),
            False,
        ),
        (ValueError("tag_commit needs a commit hash"), False),
        (EngineUnavailable("no engine"), False),
        (RuntimeError("something else"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_exec_error_is_never_transient_even_with_a_timeout_in_its_text() -> None:
    exc = query_error(
        "process timed out",
        _type="EXEC_ERROR",
        cmd=["go", "test"],
        exitCode=1,
        stdout="",
        stderr="panic: test timed out after 10m0s",
    )
    assert isinstance(exc, dagger.ExecError)
    assert not is_transient(exc)


def test_preflight_without_any_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "DAGGER_SESSION_PORT",
        "DAGGER_SESSION_TOKEN",
        "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
        "_EXPERIMENTAL_DAGGER_CLI_BIN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineUnavailable, match="container runtime such as Docker"):
        preflight()
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST", "tcp://engine:1234")
    preflight()  # a remote engine is the CLI's business: no local check
    monkeypatch.delenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST")
    monkeypatch.setenv("DAGGER_SESSION_PORT", "1")
    with pytest.raises(EngineUnavailable, match="DAGGER_SESSION_TOKEN"):
        preflight()


# --- go commands: a module fetch that hit the network is worth a retry -------------


def exec_error(command: list[str], stderr: str, stdout: str = "") -> dagger.ExecError:
    """An ExecError as the SDK builds it from the engine's EXEC_ERROR extensions."""
    exc = query_error(
        f'process "{" ".join(command)}" did not complete successfully: exit code: 1',
        _type="EXEC_ERROR",
        cmd=command,
        exitCode=1,
        stdout=stdout,
        stderr=stderr,
    )
    assert isinstance(exc, dagger.ExecError)
    return exc


MOD_DOWNLOAD = ["go", "mod", "download"]
GO_BUILD = ["go", "build", "-trimpath", "-o", "/out/app", "."]
PROXY = "https://proxy.golang.org"
UUID = "go: github.com/google/uuid@v1.6.0: "  # how go prefixes a module's failure
UUID_ZIP = f"{PROXY}/github.com/google/uuid/@v/v1.6.0.zip"
UUID_MOD = f"{PROXY}/github.com/google/uuid/@v/v1.6.0.mod"
GET_MOD = f'{UUID}Get "{UUID_MOD}": '
SUMDB = "https://sum.golang.org/lookup/github.com/google/uuid@v1.6.0"
DOWNLOADING = "go: downloading github.com/google/uuid v1.6.0\n"
CORP_X = "go: example.com/x@v1.0.0: reading https://goproxy.corp/example.com/x/@v/v1.0.0.mod: "
MISSING = "go: github.com/google/uuid@v9.9.9: reading "
CHECKSUM_MISMATCH = f"""{DOWNLOADING}verifying github.com/google/uuid@v1.6.0: checksum mismatch
\tdownloaded: h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
\tgo.sum:     h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=

SECURITY ERROR
This download does NOT match an earlier download recorded in go.sum.
The bits may have been replaced on the origin server, or an attacker may
have intercepted the download attempt.

For more information, see 'go help module-auth'.
"""
PRIVATE_AUTH = """go: github.com/acme/private@v1.0.0: reading github.com/acme/private/go.mod at \
revision v1.0.0: git ls-remote -q origin in /go/pkg/mod/cache/vcs/0f1e: exit status 128:
\tfatal: could not read Username for 'https://github.com': terminal prompts disabled
Confirm the import path was entered correctly.
If this is a private repository, see https://golang.org/doc/faq#git_https for additional \
information.
"""

GO_FAILURES = [
    # transient: the module proxy or the network failed while fetching modules
    ("proxy 502", MOD_DOWNLOAD, f"{UUID}reading {UUID_ZIP}: 502 Bad Gateway", True),
    (
        "proxy 503 with server response",
        MOD_DOWNLOAD,
        f"{UUID}reading {UUID_MOD}: 503 Service Unavailable\n"
        "\tserver response: upstream connect error or disconnect/reset before headers",
        True,
    ),
    ("i/o timeout", MOD_DOWNLOAD, f"{GET_MOD}dial tcp 142.251.36.17:443: i/o timeout", True),
    ("TLS handshake timeout", MOD_DOWNLOAD, f"{GET_MOD}net/http: TLS handshake timeout", True),
    (
        "client timeout",
        MOD_DOWNLOAD,
        f"{GET_MOD}context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
        True,
    ),
    (
        "DNS no such host",
        MOD_DOWNLOAD,
        f"{GET_MOD}dial tcp: lookup proxy.golang.org on 127.0.0.11:53: no such host",
        True,
    ),
    (
        "DNS server misbehaving",
        MOD_DOWNLOAD,
        f"{GET_MOD}dial tcp: lookup proxy.golang.org: server misbehaving",
        True,
    ),
    (
        "connection reset",
        MOD_DOWNLOAD,
        f'{UUID}Get "{UUID_ZIP}": read tcp 172.17.0.2:51234->142.251.36.17:443: read: '
        "connection reset by peer",
        True,
    ),
    ("unexpected EOF", MOD_DOWNLOAD, f"{UUID}reading {UUID_ZIP}: unexpected EOF", True),
    (
        "checksum database unreachable",
        MOD_DOWNLOAD,
        f'{UUID}verifying module: github.com/google/uuid@v1.6.0: Get "{SUMDB}": '
        "dial tcp: lookup sum.golang.org: no such host",
        True,
    ),
    (
        "go build downloading a module",
        GO_BUILD,
        f'{DOWNLOADING}main.go:6:2: github.com/google/uuid@v1.6.0: Get "{UUID_ZIP}": '
        "dial tcp: lookup proxy.golang.org: server misbehaving",
        True,
    ),
    (
        "go mod vendor, 504",
        ["go", "mod", "vendor"],
        f"{DOWNLOADING}{UUID}reading {UUID_ZIP}: 504 Gateway Timeout",
        True,
    ),
    (
        "GOPROXY=direct, git cannot resolve the host",
        MOD_DOWNLOAD,
        "go: github.com/acme/lib@v1.2.3: invalid version: git ls-remote -q origin in "
        "/go/pkg/mod/cache/vcs/4f1e: exit status 128:\n"
        "\tfatal: unable to access 'https://github.com/acme/lib/': Could not resolve host: "
        "github.com",
        True,
    ),
    # deterministic: a retry cannot fix these
    ("checksum mismatch", MOD_DOWNLOAD, CHECKSUM_MISMATCH, False),
    (
        "410 Gone",
        MOD_DOWNLOAD,
        f"{MISSING}{PROXY}/github.com/google/uuid/@v/v9.9.9.info: 410 Gone\n"
        "\tserver response: not found: github.com/google/uuid@v9.9.9: invalid version: "
        "unknown revision v9.9.9",
        False,
    ),
    ("404 Not Found", MOD_DOWNLOAD, f"{CORP_X}404 Not Found", False),
    (
        "unknown revision",
        MOD_DOWNLOAD,
        f"{MISSING}github.com/google/uuid/go.mod at revision v9.9.9: unknown revision v9.9.9",
        False,
    ),
    ("GOPROXY=off", MOD_DOWNLOAD, f"{UUID}module lookup disabled by GOPROXY=off", False),
    ("terminal prompts disabled", MOD_DOWNLOAD, PRIVATE_AUTH, False),
    ("401", MOD_DOWNLOAD, f"{CORP_X}401 Unauthorized", False),
    (
        "one module flaked, another does not exist",
        MOD_DOWNLOAD,
        f"{UUID}reading {UUID_ZIP}: 502 Bad Gateway\n{CORP_X}404 Not Found",
        False,
    ),
    ("compile error", GO_BUILD, "# example.com/app\n./main.go:12:2: undefined: thing", False),
    (
        "compile error after a download, with EOF in its text",
        GO_BUILD,
        f"{DOWNLOADING}# example.com/app\n"
        "./main.go:20:1: syntax error: unexpected EOF, expecting }",
        False,
    ),
    (
        "vet failure",
        ["go", "vet", "./..."],
        "# example.com/app\n./main.go:9:2: fmt.Printf format %d has arg name of wrong type string",
        False,
    ),
    (
        "network error not from fetching modules",
        GO_BUILD,
        "go: error obtaining buildID for go tool compile: read |0: connection reset by peer",
        False,
    ),
    ("not a go command", ["apk", "add", "git"], f"fetch {UUID_ZIP}: 502 Bad Gateway", False),
]


@pytest.mark.parametrize(
    ("command", "stderr", "transient"),
    [case[1:] for case in GO_FAILURES],
    ids=[case[0] for case in GO_FAILURES],
)
def test_go_module_fetch_failures(command: list[str], stderr: str, transient: bool) -> None:
    assert is_transient(exec_error(command, stderr)) is transient


def test_a_failing_go_test_is_never_transient_whatever_its_output_says() -> None:
    stdout = (
        "--- FAIL: TestFetch (30.00s)\n"
        '    fetch_test.go:21: Get "https://proxy.golang.org/": dial tcp: i/o timeout\n'
        "FAIL\nFAIL\texample.com/app\t30.012s\nFAIL\n"
    )
    assert not is_transient(exec_error(["go", "test", "./..."], "", stdout))


@pytest.mark.parametrize(
    "exc",
    [
        dagger.TransportError("Unexpected response from engine: 502"),
        dagger.ClientConnectionError("connection closed"),
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_lost_engine_connections_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


# --- preflight: accept what the Dagger CLI accepts, refuse fast what it cannot use ---

SH = "/bin/sh"
SLEEP = shutil.which("sleep") or "/bin/sleep"
ENGINE_VARS = (
    "DAGGER_SESSION_PORT",
    "DAGGER_SESSION_TOKEN",
    "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
    "_EXPERIMENTAL_DAGGER_CLI_BIN",
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "GOBUILD_PREFLIGHT_TIMEOUT_SECONDS",
)


class FakeRuntimes:
    """Stand-in runtime CLIs (docker, container, podman, ...) on an otherwise empty
    PATH, so neither the machine's real docker client nor anything else interferes.
    Each records its arguments in ``calls.log``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "calls.log"
        self.log.touch()
        for var in ENGINE_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("PATH", str(self.bin))

    def add(self, name: str, body: str) -> None:
        script = self.bin / name
        script.write_text(f'#!{SH}\necho "{name} $*" >> "{self.log}"\n{body}\n')
        script.chmod(0o755)

    def ok(self, name: str) -> None:
        self.add(name, "echo 'Server: fake'\nexit 0")

    def failing(self, name: str) -> None:
        self.add(name, "echo 'Cannot connect to the daemon. Is it running?' >&2\nexit 1")

    def hanging(self, name: str, pidfile: Path) -> None:
        self.add(name, f'{SLEEP} 60 &\necho $! > "{pidfile}"\nwait')

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def runtimes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRuntimes:
    return FakeRuntimes(monkeypatch, tmp_path)


def refusal() -> str:
    """Run preflight expecting a refusal; its message, checked to be one line."""
    with pytest.raises(EngineUnavailable) as info:
        preflight()
    message = str(info.value)
    assert "\n" not in message
    return message


TOOLS = ["docker", "container", "podman", "finch", "nerdctl"]


def test_refuses_at_once_when_no_runtime_is_on_path(runtimes: FakeRuntimes) -> None:
    started = time.monotonic()
    message = refusal()
    assert time.monotonic() - started < 1
    assert "none of docker, container, podman, finch, nerdctl is on PATH" in message
    assert "DAGGER_SESSION_PORT" in message and "_EXPERIMENTAL_DAGGER_RUNNER_HOST" in message


@pytest.mark.parametrize("tool", TOOLS)
def test_accepts_any_runtime_the_cli_can_use(runtimes: FakeRuntimes, tool: str) -> None:
    runtimes.ok(tool)
    preflight()
    # Apple's `container` is asked `system status`, the others `version` (drivers/*.go).
    expected = "container system status" if tool == "container" else f"{tool} version"
    assert runtimes.calls() == [expected]


def test_docker_over_ssh_with_a_working_docker_version_is_accepted(
    runtimes: FakeRuntimes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docker itself honours DOCKER_HOST (and DOCKER_CONTEXT: Colima, Rancher
    # Desktop, rootless): only its own answer says whether the daemon is there.
    runtimes.add("docker", '[ "$DOCKER_HOST" = "ssh://me@builder" ] || exit 1')
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@builder")
    preflight()
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@elsewhere")
    assert "`docker version` failed (exit status 1)" in refusal()


def test_docker_context_is_honoured(
    runtimes: FakeRuntimes, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtimes.add("docker", '[ "$DOCKER_CONTEXT" = "colima" ] || exit 1')
    assert "docker version" in refusal()
    monkeypatch.setenv("DOCKER_CONTEXT", "colima")
    preflight()


def test_a_failing_runtime_is_refused_with_its_reason_and_what_to_do(
    runtimes: FakeRuntimes,
) -> None:
    runtimes.failing("docker")
    message = refusal()
    assert "`docker version` failed (exit status 1): Cannot connect to the daemon" in message
    assert "DOCKER_HOST or DOCKER_CONTEXT" in message
    assert "container runtime such as Docker" in message


def test_the_first_runtime_on_path_decides_as_in_the_cli(
    runtimes: FakeRuntimes, monkeypatch
) -> None:
    """drivers.GetDriver takes the first runtime whose binary exists and fails if its
    check fails, without trying the next: a broken docker hides a working podman,
    and the refusal says how to select podman instead."""
    runtimes.failing("docker")
    runtimes.ok("podman")
    message = refusal()
    assert "would use docker" in message
    assert "_EXPERIMENTAL_DAGGER_RUNNER_HOST=image+podman://registry.dagger.io/engine:v" in message
    monkeypatch.setenv(
        "_EXPERIMENTAL_DAGGER_RUNNER_HOST", "image+podman://registry.dagger.io/engine:v0.21.11"
    )
    preflight()


def test_a_working_first_runtime_is_not_held_up_by_the_others(
    runtimes: FakeRuntimes, tmp_path: Path
) -> None:
    runtimes.ok("docker")
    runtimes.hanging("podman", tmp_path / "podman.pid")
    started = time.monotonic()
    preflight()
    assert time.monotonic() - started < 2  # podman, never asked, would hang 60 s
    assert runtimes.calls() == ["docker version"]


def test_a_hanging_runtime_is_cut_off(
    runtimes: FakeRuntimes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pidfile = tmp_path / "docker.pid"
    runtimes.hanging("docker", pidfile)
    monkeypatch.setenv("GOBUILD_PREFLIGHT_TIMEOUT_SECONDS", "0.5")
    started = time.monotonic()
    message = refusal()
    assert time.monotonic() - started < 3
    assert "`docker version` did not answer within 0.5 s" in message
    # What the check started went with it: no stray `sleep 60` is left behind.
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only unreaped


def test_each_check_is_capped_by_default() -> None:
    assert 1 <= PREFLIGHT_TIMEOUT_DEFAULT <= 5


@pytest.mark.parametrize(
    "runner",
    [
        "tcp://dagger-engine.internal:1234",
        "ssh://builder@engine-host",
        "kube-pod://dagger-engine-0?namespace=dagger",
        "tls://engine.example.com:443",
        "dagger-cloud://default-engine-config.dagger.cloud",
    ],
)
def test_remote_runner_hosts_are_the_clis_business(
    runtimes: FakeRuntimes, monkeypatch, runner: str
) -> None:
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST", runner)
    preflight()  # no runtime, no network probe


@pytest.mark.parametrize(
    ("runner", "tool"),
    [
        ("image://registry.dagger.io/engine:v0.21.11", "podman"),
        ("container://dagger-engine", "docker"),
        ("image+podman://registry.dagger.io/engine:v0.21.11", "podman"),
        ("container+nerdctl://dagger-engine", "nerdctl"),
        ("docker-container://dagger-engine", "docker"),
        ("docker-image://registry.dagger.io/engine:v0.21.11", "docker"),
    ],
)
def test_runtime_runner_hosts_need_their_runtime(
    runtimes: FakeRuntimes, monkeypatch: pytest.MonkeyPatch, runner: str, tool: str
) -> None:
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST", runner)
    message = refusal()
    assert f"_EXPERIMENTAL_DAGGER_RUNNER_HOST={runner}" in message
    runtimes.ok(tool)
    preflight()


def test_a_runner_host_for_one_runtime_ignores_the_others(
    runtimes: FakeRuntimes, monkeypatch
) -> None:
    runtimes.ok("docker")
    monkeypatch.setenv(
        "_EXPERIMENTAL_DAGGER_RUNNER_HOST", "image+podman://registry.dagger.io/engine:v1"
    )
    assert "podman is not on PATH" in refusal()
    assert runtimes.calls() == []


def test_unix_runner_host_needs_a_listener(runtimes: FakeRuntimes, monkeypatch) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths are short
        path = f"{short}/engine.sock"
        monkeypatch.setenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST", f"unix://{path}")
        assert f"no Dagger engine answers on {path}" in refusal()
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path)
            server.listen()
            preflight()


def test_unknown_runner_host_scheme_is_refused(runtimes: FakeRuntimes, monkeypatch) -> None:
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_RUNNER_HOST", "dagger-engine.internal:1234")
    assert "no driver for scheme" in refusal()


def test_cli_bin_must_exist(runtimes: FakeRuntimes, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_CLI_BIN", str(tmp_path / "missing-dagger"))
    assert "_EXPERIMENTAL_DAGGER_CLI_BIN" in refusal()
    runtimes.ok("dagger")
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_CLI_BIN", str(runtimes.bin / "dagger"))
    preflight()  # the user's CLI finds its engine its own way
    assert runtimes.calls() == []


def test_nothing_is_cached_between_calls(runtimes: FakeRuntimes) -> None:
    runtimes.failing("docker")
    refusal()
    runtimes.ok("docker")  # the daemon came up
    preflight()
    runtimes.failing("docker")  # and went away again
    refusal()
