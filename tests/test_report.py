"""Build reports: links to pushed images, the success and failure markdown, events.

The artifact and event functions are replaced by recorders, so these tests check
what the reports say without a Prefect API; tests/test_build_flow.py reads the
same reports back through a real one.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import dagger
import pytest
from dagger._exceptions import QueryErrorValue
from pydantic import ValidationError

import tasks.report as report
from tasks.params import BuildParams, parse_params
from tasks.report import (
    BuildResult,
    StageRecord,
    failure_markdown,
    failure_payload,
    registry_link,
    success_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
TARBALL_DIGEST = "sha256:" + "f" * 64

LINKS = [
    # Docker Hub, under every name it answers to; index digests get the tags page
    ("docker.io/team/app:1", False, "https://hub.docker.com/r/team/app/tags"),
    ("index.docker.io/team/app:1", False, "https://hub.docker.com/r/team/app/tags"),
    ("registry-1.docker.io/team/app:1", False, "https://hub.docker.com/r/team/app/tags"),
    ("team/app:1", False, "https://hub.docker.com/r/team/app/tags"),
    ("docker.io/library/alpine:3.22", False, "https://hub.docker.com/_/alpine"),
    ("alpine:3.22", False, "https://hub.docker.com/_/alpine"),
    # a single-platform push answers with the manifest digest: the image's own page
    (
        "docker.io/team/app:1",
        True,
        f"https://hub.docker.com/layers/team/app/1/images/sha256-{HEX}",
    ),
    (
        "docker.io/library/alpine:3.22",
        True,
        f"https://hub.docker.com/layers/library/alpine/3.22/images/sha256-{HEX}",
    ),
    # Hub has no page for deeper paths: the registry API
    (
        "docker.io/a/b/c:1",
        False,
        f"https://registry-1.docker.io/v2/a/b/c/manifests/{DIGEST}",
    ),
    ("ghcr.io/acme/app:1", False, "https://ghcr.io/acme/app"),
    ("ghcr.io/acme/tools/app:1", True, "https://ghcr.io/acme/tools/app"),
    ("quay.io/acme/app:1", False, "https://quay.io/repository/acme/app?tab=tags"),
    ("gcr.io/proj/app:1", False, f"https://gcr.io/v2/proj/app/manifests/{DIGEST}"),
    (
        "europe-west1-docker.pkg.dev/proj/repo/app:1",
        False,
        f"https://europe-west1-docker.pkg.dev/v2/proj/repo/app/manifests/{DIGEST}",
    ),
    (
        "registry.example.com:8443/team/app:1",
        True,
        f"https://registry.example.com:8443/v2/team/app/manifests/{DIGEST}",
    ),
    # loopback registries speak plain HTTP
    ("127.0.0.1:5000/team/app:1", False, f"http://127.0.0.1:5000/v2/team/app/manifests/{DIGEST}"),
    ("localhost:5000/app:1", False, f"http://localhost:5000/v2/app/manifests/{DIGEST}"),
    ("[::1]:5000/app:1", False, f"http://[::1]:5000/v2/app/manifests/{DIGEST}"),
]


@pytest.mark.parametrize(("name", "single", "link"), LINKS)
def test_registry_link(name: str, single: bool, link: str) -> None:
    assert registry_link(f"{name}@{DIGEST}", single_manifest=single) == link


def test_registry_link_without_a_digest_names_the_tag() -> None:
    assert registry_link("127.0.0.1:5000/app:1") == "http://127.0.0.1:5000/v2/app/manifests/1"
    assert registry_link("docker.io/team/app:1", single_manifest=True).endswith("/team/app/tags")


def result(references: list[str], **changes: Any) -> BuildResult:
    data: dict[str, Any] = {
        "app": "hello-go",
        "version": "1.2.3",
        "tarball": "build/hello-go.oci.tar",
        "digest": TARBALL_DIGEST,
        "platforms": {"linux/amd64": "sha256:" + "a" * 64, "linux/arm64": "sha256:" + "b" * 64},
        "binaries": {"linux/amd64": 5_000_000, "linux/arm64": 4_900_000},
        "references": references,
        "requested_references": [
            r.partition("@")[0].removeprefix("docker.io/") for r in references
        ],
        "source_digest": "sha256:" + "c" * 64,
        "commit": "",
        "go_version": "go1.27.3",
        "stages": [StageRecord(name="compile linux/amd64", seconds=1.5, cached=False)],
    }
    return BuildResult(**{**data, **changes})


PUSHED = [
    f"docker.io/team/app:1@{DIGEST}",
    f"docker.io/team/app:latest@{DIGEST}",
    f"127.0.0.1:5000/team/app:1@{DIGEST}",
]


def test_success_markdown_shows_each_reference_with_its_digest_and_link() -> None:
    md = success_markdown(result(PUSHED))
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert rows == [
        f"| `team/app:1` | `docker.io/team/app:1` | `{DIGEST}` "
        "| [Docker Hub](https://hub.docker.com/r/team/app/tags) |",
        f"| `team/app:latest` | `docker.io/team/app:latest` | `{DIGEST}` "
        "| [Docker Hub](https://hub.docker.com/r/team/app/tags) |",
        f"| `127.0.0.1:5000/team/app:1` | `127.0.0.1:5000/team/app:1` | `{DIGEST}` "
        f"| [manifest (registry API)](http://127.0.0.1:5000/v2/team/app/manifests/{DIGEST}) |",
    ]
    # The registry's digest differs from the tarball's here, and the report says why.
    assert "need not equal the tarball's image digest" in md
    assert f"| linux/arm64 | 4,900,000 bytes | `sha256:{'b' * 64}` |" in md


def test_success_markdown_without_references() -> None:
    md = success_markdown(result([]))
    assert "- none (exported the OCI tarball only)" in md
    assert "registry digest" not in md


def test_a_platform_without_a_name_is_refused_clearly() -> None:
    with pytest.raises(ValidationError, match="empty platform name"):
        result(PUSHED, platforms={"": "sha256:" + "a" * 64})


class Recorder:
    """Stands in for Prefect's artifact and event functions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.artifacts: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        for kind in ("markdown", "table", "link"):
            monkeypatch.setattr(report, f"acreate_{kind}_artifact", self._artifact(kind))
        monkeypatch.setattr(report, "emit_event", self._event)

    def _artifact(self, kind: str):
        async def create(**kwargs: Any) -> None:
            self.artifacts.append((kind, kwargs))

        return create

    def _event(self, event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
        self.events.append((event, payload))


def test_published_event_carries_each_reference_as_an_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = Recorder(monkeypatch)
    asyncio.run(report.report_success(result(PUSHED[:1] + PUSHED[2:])))
    [(event, payload)] = recorded.events
    assert event == "gobuild.image.published"
    assert payload["digest"] == TARBALL_DIGEST
    assert payload["references"] == [
        {
            "ref": "docker.io/team/app:1",
            "requested": "team/app:1",
            "digest": DIGEST,
            "link": "https://hub.docker.com/r/team/app/tags",
        },
        {
            "ref": "127.0.0.1:5000/team/app:1",
            "requested": "127.0.0.1:5000/team/app:1",
            "digest": DIGEST,
            "link": f"http://127.0.0.1:5000/v2/team/app/manifests/{DIGEST}",
        },
    ]
    links = [kwargs for kind, kwargs in recorded.artifacts if kind == "link"]
    assert [link["link"] for link in links] == [r["link"] for r in payload["references"]]
    assert links[0]["link_text"] == f"docker.io/team/app:1@{DIGEST}"


def test_exported_event_has_no_references(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = Recorder(monkeypatch)
    asyncio.run(report.report_success(result([])))
    [(event, payload)] = recorded.events
    assert event == "gobuild.image.exported" and payload["references"] == []
    assert not [kind for kind, _ in recorded.artifacts if kind == "link"]


# --- failures ----------------------------------------------------------------------


def exec_error(command: list[str], stdout: str, stderr: str, exit_code: int = 1):
    """An ExecError as the SDK builds it from the engine's EXEC_ERROR extensions."""
    value = QueryErrorValue(
        f'process "{" ".join(command)}" did not complete successfully: exit code: {exit_code}',
        extensions={
            "_type": "EXEC_ERROR",
            "cmd": command,
            "exitCode": exit_code,
            "stdout": stdout,
            "stderr": stderr,
        },
    )
    exc = dagger.QueryError([value], types.SimpleNamespace(document=None))
    assert isinstance(exc, dagger.ExecError)
    return exc


def go_test_failure() -> dagger.ExecError:
    """`go test` prints its failures on stdout; stderr only has go's own summary."""
    passing = [f"=== RUN   TestOK{i}\n--- PASS: TestOK{i} (0.00s)" for i in range(30)]
    stdout = "\n".join(
        [
            *passing,
            "=== RUN   TestHealthz",
            "    main_test.go:21: GET /healthz = 500, want 200",
            "    main_test.go:22: body: ```not ok```",
            "--- FAIL: TestHealthz (0.01s)",
            "FAIL",
            "FAIL\texample.com/hello-go\t0.012s",
            "FAIL",
        ]
    )
    return exec_error(["go", "test", "./..."], stdout + "\n", "")


def params() -> BuildParams:
    return parse_params({"source": str(ROOT / "examples/hello-go")})


def test_failure_markdown_shows_the_tail_of_stdout_and_stderr() -> None:
    exc = go_test_failure()
    md = failure_markdown(params(), "compile linux/amd64", exc)
    assert "# Build of `hello-go`: failed in compile linux/amd64" in md
    assert "Command (exit code 1):" in md and "go test ./..." in md
    assert "stdout (last 40 of 67 lines):" in md
    assert "--- FAIL: TestHealthz (0.01s)" in md and "GET /healthz = 500, want 200" in md
    assert "TestOK0 " not in md  # beyond the tail
    assert "stderr: (empty)" in md
    # The test's own backticks do not close the block they are shown in.
    assert "````\n" in md


def test_failure_markdown_of_a_compile_error_shows_stderr() -> None:
    exc = exec_error(
        ["go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=1.0.0", "-o", "/out/x"],
        "",
        "# example.com/hello-go\n./main.go:12:2: undefined: thing\n",
    )
    md = failure_markdown(params(), "compile linux/amd64", exc)
    assert "go build -trimpath -ldflags '-s -w -X main.version=1.0.0' -o /out/x" in md
    assert (
        "stderr (all):\n\n```\n# example.com/hello-go\n./main.go:12:2: undefined: thing\n```" in md
    )
    assert "stdout: (empty)" in md


def test_failure_event_carries_short_tails_of_both_streams() -> None:
    exc = go_test_failure()
    payload = failure_payload(params(), "compile linux/amd64", exc)
    assert payload["error"] == 'process "go test ./..." did not complete successfully: exit code: 1'
    assert payload["command"] == ["go", "test", "./..."] and payload["exit_code"] == 1
    assert len(payload["stdout_tail"].splitlines()) == 20
    assert payload["stdout_tail"].endswith("FAIL\texample.com/hello-go\t0.012s\nFAIL")
    assert "--- FAIL: TestHealthz" in payload["stdout_tail"]
    assert payload["stderr_tail"] == ""


def test_failure_report_writes_the_artifact_and_the_event(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = Recorder(monkeypatch)
    asyncio.run(report.report_failure(params(), "compile linux/amd64", go_test_failure()))
    [(kind, artifact)] = recorded.artifacts
    assert kind == "markdown" and artifact["key"] == "build-hello-go-failure"
    assert "--- FAIL: TestHealthz" in artifact["markdown"]
    [(event, payload)] = recorded.events
    assert event == "gobuild.build.failed" and "--- FAIL: TestHealthz" in payload["stdout_tail"]


def test_failure_report_of_other_errors() -> None:
    md = failure_markdown(params(), "publish", RuntimeError("registry said no"))
    assert "RuntimeError: registry said no" in md
    payload = failure_payload(params(), "publish", RuntimeError("registry said no\nmore"))
    assert payload == {
        "app": "hello-go",
        "stage": "publish",
        "error": "registry said no",
        "hint": "",
    }
    # A base image the registry refused: the hint names the parameter that named it.
    refused = RuntimeError(
        'failed to resolve image "docker.io/library/alpine:3.22.2" (platform: "linux/amd64"): '
        "unexpected status from HEAD request to https://registry-1.docker.io/v2/library/alpine/"
        "manifests/3.22.2: 401 Unauthorized"
    )
    hint = failure_payload(params(), "assemble runtime", refused)["hint"]
    assert hint.startswith("docker.io refused to serve runtime_image 'alpine:3.22.2' without")
    assert f"Hint: {hint}." in failure_markdown(params(), "assemble runtime", refused)


def test_cli_failure_summary_ends_with_the_commands_own_words() -> None:
    from flows.build import failure_summary

    exc = exec_error(
        ["go", "vet", "./..."],
        "",
        "# example.com/app\n" + "noise\n" * 30 + "./main.go:9:2: fmt.Printf format %d has arg x\n",
    )
    text = failure_summary(exc)
    assert text.splitlines()[0].startswith('error: build failed: process "go vet ./..."')
    assert text.rstrip().endswith("./main.go:9:2: fmt.Printf format %d has arg x")
    assert "--- last lines of stderr ---" in text and "stdout ---" not in text
    assert len(text.splitlines()) <= 2 + 20
    assert failure_summary(ValueError("bad\nsecond")) == "error: build failed: bad"


def test_a_forced_stage_reuses_one_refreshing_variant_of_its_task() -> None:
    """``force_rebuild`` runs each stage with ``refresh_cache`` on; the variant is
    made once per task (``with_options`` builds a whole Task) and keeps the task's
    own options, while the task itself stays as it was for unforced runs."""
    from tasks.compile import compile_binary

    forced = report._refreshing(compile_binary)
    assert forced is report._refreshing(compile_binary)
    assert forced is not compile_binary
    assert forced.refresh_cache is True
    assert compile_binary.refresh_cache is None
    assert (forced.name, forced.retries, forced.cache_key_fn) == (
        compile_binary.name,
        compile_binary.retries,
        compile_binary.cache_key_fn,
    )
