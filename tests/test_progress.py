"""Progress and logs: what a build says while it runs, on the terminal and in the run's logs.

The terminal side is checked as a user sees it: ``python -m flows.build`` in a
subprocess, its stderr read line by line as the lines arrive. The logs side is
read back through the Prefect API, for a CLI run and for a deployment run, and
must hold one line per engine command with its duration, the cache decisions and
the digests (``tasks/progress.py``). The unit tests pin the pieces: what a command
and a URL look like in a line, the heartbeat, the compact terminal form, and the
Dagger SDK's progress stream under ``--progress plain``.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import dagger
import pytest

from flows import terminal as cli_terminal
from tasks import progress, session
from tasks.oci_layout import image_digests
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import run_logs
from tests.prefect_fixtures import PrefectAPI
from tests.server_fixtures import PrefectServer, Served, wait_for

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ["linux/amd64", "linux/arm64"]
SLOW_TEST_SECONDS = 25  # longer than two heartbeats: silence would show
# The behaviour under test: a line at least every 10 s. The margin is for a busy
# 2-core machine, where a process may wait a while for a core.
MAX_GAP_SECONDS = 10.0 + 3.0
PROGRESS_LINE = re.compile(r"^\[\s*\d+\.\d+s\] (?P<text>.*)$")
DURATION = r"\d+\.\ds"


# --- the pieces -------------------------------------------------------------------


def test_commands_are_shown_without_values_of_flags_that_may_hold_anything() -> None:
    args = ["go", "build", "-trimpath", "-ldflags", "-s -w -X main.key=s3cr3t", "-o", "/o/a", "."]
    assert progress.command_text(args) == "go build -trimpath -ldflags … -o /o/a ."
    assert progress.command_text(["go", "vet", "-tags", "a,b", "./..."]) == (
        "go vet -tags a,b ./..."
    )
    assert progress.command_text(["go", "test", "has space"]) == "go test 'has space'"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:tok3n@git.example.com/r.git", "https://***@git.example.com/r.git"),
        ("https://tok3n@git.example.com:8443/r.git", "https://***@git.example.com:8443/r.git"),
        ("ssh://git:pw@host/r.git", "ssh://***@host/r.git"),
        ("https://git.example.com/r.git", "https://git.example.com/r.git"),
        ("git@github.com:acme/r.git", "git@github.com:acme/r.git"),
        ("/srv/src/app", "/srv/src/app"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert progress.safe_url(url) == shown


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_compact_on_a_terminal_and_plain_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    assert cli_terminal.resolve_mode("auto", FakeTTY()) == "tty"
    assert cli_terminal.resolve_mode("auto", io.StringIO()) == "plain"
    assert cli_terminal.resolve_mode("plain", FakeTTY()) == "plain"
    assert cli_terminal.resolve_mode("quiet", FakeTTY()) == "quiet"
    monkeypatch.setenv("TERM", "dumb")
    assert cli_terminal.resolve_mode("auto", FakeTTY()) == "plain"
    with pytest.raises(ValueError, match="--progress"):
        cli_terminal.resolve_mode("fancy", io.StringIO())


@pytest.fixture
def gobuild_logger() -> Iterator[logging.Logger]:
    """The logger progress records go to outside a flow run, at INFO, restored after."""
    log = logging.getLogger(progress.CHILD)
    level, handlers = log.level, list(log.handlers)
    log.setLevel(logging.INFO)
    yield log
    log.setLevel(level)
    log.handlers[:] = handlers


def until(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_plain_prints_each_step_and_a_heartbeat_while_one_runs(
    gobuild_logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    terminal = cli_terminal.TerminalProgress(stream, heartbeat=0.3).start()
    gobuild_logger.addHandler(terminal)

    async def compile_with_a_slow_build() -> None:
        progress.stage_started("compile linux/arm64")
        async with progress.step("compile linux/arm64", "go build -o /out/app .") as step:
            await asyncio.to_thread(until, lambda: "running" in stream.getvalue())
            step.outcome = "sha256:abc"

    try:
        asyncio.run(compile_with_a_slow_build())
    finally:
        terminal.stop()
    lines = [PROGRESS_LINE.match(line) for line in stream.getvalue().splitlines()]
    assert all(lines), stream.getvalue()
    texts = [m["text"] for m in lines if m]
    assert texts[0] == "compile linux/arm64 started"
    assert texts[1] == "compile linux/arm64: go build -o /out/app . started"
    assert re.fullmatch(r"compile linux/arm64: go build -o /out/app \. running \d+s", texts[2])
    # The heartbeat names the innermost step only, not the stage around it.
    assert not any(re.fullmatch(r"compile linux/arm64 running \d+s", t) for t in texts)
    assert re.fullmatch(
        rf"compile linux/arm64: go build -o /out/app \. done in {DURATION}: sha256:abc", texts[-1]
    )


def test_plain_heartbeat_between_steps_names_the_last_line(gobuild_logger: logging.Logger) -> None:
    stream = io.StringIO()
    terminal = cli_terminal.TerminalProgress(stream, heartbeat=0.3).start()
    gobuild_logger.addHandler(terminal)
    try:
        progress.note("load source: local directory /src")
        until(lambda: "still running" in stream.getvalue())
    finally:
        terminal.stop()
    assert "build: still running (last: load source: local directory /src)" in stream.getvalue()


def test_tty_keeps_starts_in_a_status_line_and_ends_as_lines(
    gobuild_logger: logging.Logger,
) -> None:
    stream = FakeTTY()
    terminal = cli_terminal.TerminalProgress(stream, tty=True)  # no heartbeat thread: by hand
    gobuild_logger.addHandler(terminal)

    async def two_builds() -> None:
        async with (
            progress.step("compile linux/amd64", "go build ."),
            progress.step("compile linux/arm64", "go build ."),
        ):
            status = stream.getvalue()
            assert "\n" not in status  # nothing permanent yet
            assert status.startswith("\r\x1b[K[")
            last = status.rsplit("\r\x1b[K", 1)[-1]
            assert last.endswith(
                "compile linux/amd64: go build . 0s | compile linux/arm64: go build . 0s"
            )

    asyncio.run(two_builds())
    terminal.stop()
    out = stream.getvalue()
    assert "started" not in out
    texts = permanent_texts(out)
    assert len(texts) == 2, out
    assert re.fullmatch(rf"compile linux/arm64: go build \. done in {DURATION}", texts[0])
    assert re.fullmatch(rf"compile linux/amd64: go build \. done in {DURATION}", texts[1])
    assert re.search(rf" done in {DURATION}\n$", out)  # nothing runs: no status line is left


def permanent_texts(out: str) -> list[str]:
    """The lines a TTY keeps: each ends with a newline, after any status line."""
    texts = []
    for line in out.split("\n")[:-1]:
        match = PROGRESS_LINE.match(line.rsplit("\r\x1b[K", 1)[-1])
        assert match, repr(line)
        texts.append(match["text"])
    return texts


class FakeContainer:
    """Stands in for a builder step's container: counts syncs, fails when told."""

    def __init__(self, fail: int = 0) -> None:
        self.syncs = 0
        self.fail = fail
        self.release = asyncio.Event()

    async def sync(self) -> str:
        self.syncs += 1
        await self.release.wait()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("go vet failed")
        return "id"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_builder_commands_run_once_per_run_and_a_failed_one_again_on_retry(
    gobuild_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = Records()
    gobuild_logger.addHandler(records)
    scope = session.EngineScope()  # one flow run
    monkeypatch.setattr(session, "current_scope", lambda: scope)
    download, vet = FakeContainer(), FakeContainer(fail=1)
    steps = [(["go", "mod", "download"], download), (["go", "vet", "./..."], vet)]

    async def two_platforms() -> list:
        amd = asyncio.create_task(progress.engine_steps("compile linux/amd64", steps))
        arm = asyncio.create_task(progress.engine_steps("compile linux/arm64", steps))
        await asyncio.sleep(0.05)  # both are waiting for `go mod download`
        download.release.set()
        vet.release.set()
        return await asyncio.gather(amd, arm, return_exceptions=True)

    outcomes = asyncio.run(two_platforms())
    # Each command ran once for both platforms, and the vet failure reached both.
    assert download.syncs == 1 and vet.syncs == 1
    assert [str(o) for o in outcomes] == ["go vet failed", "go vet failed"]
    text = "\n".join(records.messages)
    assert len(re.findall(r"^compile linux/amd64: go mod download done in", text, re.M)) == 1
    assert re.search(
        r"^compile linux/arm64: go mod download \(run by compile linux/amd64\) reused after",
        text,
        re.M,
    ), text
    assert re.search(r"^compile linux/amd64: go vet \./\.\.\. failed after", text, re.M), text

    # A retry runs the failed command again, and only that one.
    records.messages.clear()
    asyncio.run(progress.engine_steps("compile linux/arm64", steps))
    assert download.syncs == 1 and vet.syncs == 2
    assert records.messages[0] == (
        "compile linux/arm64: go mod download reused from compile linux/amd64"
    )
    assert re.fullmatch(
        rf"compile linux/arm64: go vet \./\.\.\. done in {DURATION}", records.messages[-1]
    )


@pytest.mark.parametrize(("mode", "sent"), [("plain", True), ("tty", False), ("quiet", False)])
def test_the_sdk_gets_dagger_progress_stream_with_plain_only(
    monkeypatch: pytest.MonkeyPatch, mode: str, sent: bool
) -> None:
    configs: list[dagger.Config] = []

    @asynccontextmanager
    async def connection(config: dagger.Config) -> AsyncIterator[None]:
        configs.append(config)
        yield

    monkeypatch.setattr(dagger, "connection", connection)
    monkeypatch.setattr(session, "preflight", lambda: None)
    monkeypatch.setenv(progress.MODE_ENV, mode)

    async def open_session() -> None:
        async with session.engine_session():
            pass

    asyncio.run(open_session())
    assert configs[0].log_output is (sys.stderr if sent else None)
    assert configs[0].retry is None


# --- the story of a run, read back through the API ---------------------------------


def slow_app(base: Path, hello_go: Path, name: str, slow_seconds: int = 0) -> Path:
    """hello-go under a new name, never built before (so nothing is cached), with a
    test that sleeps ``slow_seconds``: a long, silent engine command."""
    app = base / name
    shutil.copytree(hello_go, app)
    (app / "slow_test.go").write_text(
        "package main\n\n"
        'import (\n\t"testing"\n\t"time"\n)\n\n'
        f'const nonce = "{uuid.uuid4().hex}"\n\n'
        "func TestSlowly(t *testing.T) {\n"
        f"\ttime.Sleep({slow_seconds} * time.Second)\n"
        "}\n"
    )
    return app


def assert_story(messages: list[str], app: str, tarball: Path, platforms: list[str]) -> None:
    """One line per engine command with its duration, the source with its digest,
    the cache decision, each binary, each platform's image digest and size, and
    the end: what a user reading the run's logs in the UI is told."""
    text = "\n".join(messages)

    def one(pattern: str) -> re.Match[str]:
        found = [m for m in (re.fullmatch(pattern, line) for line in messages) if m]
        assert len(found) == 1, f"{len(found)} lines match {pattern!r}:\n{text[-6000:]}"
        return found[0]

    plat = "(?:" + "|".join(re.escape(p) for p in platforms) + ")"
    # The builder's commands run once per run, by whichever compile got there first.
    for command in (r"go mod download", r"go vet \./\.\.\.", r"go test \./\.\.\."):
        one(rf"compile {plat}: {command} done in {DURATION}")
    for platform in platforms:
        p = re.escape(platform)
        one(rf"compile {p}: go build -trimpath -ldflags … -o /out/{app} \. done in {DURATION}")
        one(rf"compile {p}: binary \d+\.\d MB, sha256:[0-9a-f]{{64}}, go\S+")
        one(rf"compile {p} done in {DURATION}")
    source = one(
        r"load source: local directory (?P<path>\S+) \(not a git checkout\): \d+ files, "
        r"[\d.]+ (?:B|kB) sent, digest (?P<digest>sha256:[0-9a-f]{64})"
    )
    assert source["path"].endswith(app)
    first = re.escape(platforms[0])
    one(
        rf"cache: compile {first} is not in Prefect's cache \(key [0-9a-f]{{16}}…\): "
        "opening an engine session"
    )
    one(rf"engine slot: acquired after {DURATION} \(limit 'gobuild-engine'\)")
    one(rf"engine: open a Dagger session done in {DURATION}")
    digest, manifests = image_digests(tarball)
    for platform, manifest in manifests.items():
        one(rf"assemble runtime: {re.escape(platform)} image {manifest} \([\d.]+ (?:kB|MB)\)")
    one(rf"assemble runtime: image index {digest} in \S+ \([\d.]+ (?:kB|MB)\)")
    one(rf"build: finished {app} \S+: image {digest} in \S+")


def cli_run(args: list[str], env: dict[str, str]) -> tuple[int, str, list[tuple[float, str]]]:
    """Run the CLI; -> (exit status, stdout, stderr lines with the time each arrived)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.build", *args],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, str]] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert proc.stdout is not None
        stdout = proc.stdout.read()  # stderr is the reader's alone
        proc.wait(timeout=600)
    finally:
        proc.kill()
    reader.join(timeout=30)
    return proc.returncode, stdout, lines


def flow_run_ids_named(name: str) -> list[str]:
    """The ids of the flow runs called ``name``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return [str(r.id) for r in sorted(runs, key=lambda r: r.created)]


def test_a_cold_cli_build_prints_a_line_every_10s_and_its_logs_tell_the_story(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    app = slow_app(tmp_path, hello_go, "slowapp", SLOW_TEST_SECONDS)
    out = tmp_path / "slow.oci.tar"
    args = [str(app), "--version", "1.0.0", "--output", str(out)]
    args += [a for p in PLATFORMS for a in ("--platform", p)]
    env = {**os.environ, **prefect_api.env, **dagger_engine.env}
    status, stdout, lines = cli_run([*args, "--progress", "plain"], env)
    err = "\n".join(line for _, line in lines)
    assert status == 0, err[-4000:]

    # The terminal: a line at least every 10 s, from the first to the last.
    shown = [(t, m["text"]) for t, line in lines if (m := PROGRESS_LINE.match(line))]
    assert shown and shown[-1][1].startswith("build: finished"), err[-4000:]
    gaps = [(b[0] - a[0], b[1]) for a, b in itertools.pairwise(shown)]
    longest = max(gaps)
    assert longest[0] <= MAX_GAP_SECONDS, (
        f"{longest[0]:.1f} s of silence before {longest[1]!r}:\n{err[-6000:]}"
    )
    # ... kept up by the heartbeat while the slow `go test` ran.
    test_line = next(t for _, t in shown if re.search(r"go test \./\.\.\. done in", t))
    assert float(test_line.rsplit(" ", 1)[1].rstrip("s")) >= SLOW_TEST_SECONDS
    assert any(
        re.fullmatch(r"compile linux/(amd64|arm64): go test \./\.\.\. running \d+s", t)
        for _, t in shown
    ), err[-4000:]
    # Prefect's per-task chatter stays off the terminal ...
    assert "Finished in state" not in err and "Created task run" not in err
    assert stdout.splitlines()[-1].split()[1].startswith("sha256:")

    # ... and in the run's logs, with the story: the same lines as the terminal's.
    [first] = flow_run_ids_named(f"build {app}")
    messages = run_logs(first)
    assert_story(messages, "slowapp", out, PLATFORMS)
    assert any("Finished in state Completed" in m for m in messages)
    story = [m for m in messages if " done in " in m or m.startswith(("cache:", "load source:"))]
    terminal = {text for _, text in shown}
    assert story and all(m in terminal for m in story), set(story) - terminal

    # The same build again, quiet: only the result, served from Prefect's cache.
    status, again, lines = cli_run([*args, "--progress", "quiet"], env)
    assert status == 0, "\n".join(line for _, line in lines)[-4000:]
    assert again == stdout
    assert not [line for _, line in lines if PROGRESS_LINE.match(line)]
    assert not any("Finished in state" in line for _, line in lines)
    first_again, second = flow_run_ids_named(f"build {app}")
    assert first_again == first
    messages = run_logs(second)
    text = "\n".join(messages)
    for stage in ("compile linux/amd64", "compile linux/arm64", "assemble runtime"):
        assert re.search(rf"^{stage}: served from cache \(key [0-9a-f]{{16}}…\)$", text, re.M), text
    assert re.search(
        r"^cache: every engine stage is in Prefect's cache \(assemble runtime key [0-9a-f]{16}…\): "
        r"no engine session$",
        text,
        re.M,
    ), text
    assert " go build " not in text and "open a Dagger session" not in text
    digest, _ = image_digests(out)
    assert any(m.startswith(f"build: finished slowapp 1.0.0: image {digest} in ") for m in messages)


# --- a deployment run ---------------------------------------------------------------


def test_a_deployment_run_logs_each_command_the_cache_decision_and_the_digests(
    prefect_server: PrefectServer, served: Served, hello_go: Path, tmp_path: Path
) -> None:
    app = slow_app(served.work, hello_go, "deployedapp")
    out = tmp_path / "deployed.oci.tar"
    with prefect_server.client() as api:
        r = api.post(
            f"/deployments/{served.deployment_ids['on-demand']}/create_flow_run",
            json={"parameters": {"source": str(app), "output": str(out), "platforms": PLATFORMS}},
        )
        assert r.status_code == 201, r.text
    run_id = r.json()["id"]

    def finished() -> list[str] | None:
        with prefect_server.client() as api:
            r = api.post(
                "/logs/filter",
                json={
                    "logs": {"flow_run_id": {"any_": [run_id]}},
                    "sort": "TIMESTAMP_ASC",
                    "limit": 200,
                },
            )
        r.raise_for_status()
        messages = [entry["message"] for entry in r.json()]
        return messages if any(m.startswith("build: ") for m in messages) else None

    messages = wait_for("the run's last log line", finished, timeout=300, procs=[served.proc])
    assert any(m.startswith("build: finished") for m in messages), "\n".join(messages)
    assert_story(messages, "deployedapp", out, PLATFORMS)
