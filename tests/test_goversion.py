"""A golang builder whose Go is older than the module's ``go`` line is refused
before engine work where the tag says so; where only the engine can tell (a
digest-pinned image, a git source, a dependency), its failure names the fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import dagger
import pytest

from flows.build import failure_summary
from tasks.gohints import go_hint
from tasks.goversion import image_go, required_go, version_key
from tasks.params import ParamsError, parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, task_runs
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree

MAIN = "package main\n\nfunc main() {}\n"
DIGEST = "sha256:" + "ab" * 32


def module(root: Path, go_line: str, **extra: str) -> Path:
    return write_tree(
        root, {"go.mod": f"module example.com/app\n\ngo {go_line}\n", "main.go": MAIN, **extra}
    )


def test_versions_order_as_go_version_compare_does() -> None:
    ordered = ["1.9.2", "1.20rc1", "1.20", "1.20.1", "1.21", "1.21beta1", "1.21rc1", "1.21rc2"]
    ordered += ["1.21.0", "1.21.10", "1.22"]
    keys = [version_key(v) for v in ordered]
    assert None not in keys
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(set(keys)) == len(keys)
    # Before 1.21 a release was named 1.N: go/version reads 1.20 as 1.20.0.
    assert version_key("1.20") == version_key("1.20.0")
    for bad in ("", "1", "go1.21", "1.21.x", "1.21-rc1", "v1.21.0"):
        assert version_key(bad) is None, bad


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("golang:1.27.3-bookworm", "1.27.3"),
        ("golang:1.27.3", "1.27.3"),
        ("docker.io/library/golang:1.26-alpine3.22", "1.26"),
        ("mirror.gcr.io/library/golang:1.28rc1-bookworm", "1.28rc1"),
        ("127.0.0.1:5000/golang:1.21.0", "1.21.0"),
        ("golang:1.28-rc-bookworm", "1.28rc"),  # docker-library's tag of the newest rc
    ],
)
def test_a_golang_tag_names_its_go(ref: str, expected: str) -> None:
    found = image_go(ref)
    assert found is not None and found[0] == expected


@pytest.mark.parametrize(
    "ref",
    [
        f"golang:1.20.1@{DIGEST}",  # the digest decides what is pulled, not the tag
        "golang:alpine",
        "golang:1-bookworm",
        "golang:tip-20261101-bookworm",
        "cgr.dev/chainguard/go:1.20",
        "example.com/golang-builder:1.20",
    ],
)
def test_a_tag_that_cannot_tell_is_not_judged(ref: str) -> None:
    assert image_go(ref) is None


def test_the_newest_go_line_of_module_and_workspace_counts(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "go.work": "go 1.26.1\n\nuse ./svc\n",
            "svc/go.mod": "module example.com/svc\n\ngo 1.25 // keep\n\ntoolchain go1.99.0\n",
            "svc/main.go": MAIN,
        },
    )
    assert required_go(tmp_path, "svc") == ("1.26.1", "go.work")
    (tmp_path / "go.work").write_text("go 1.24\n\nuse ./svc\n")
    assert required_go(tmp_path, "svc") == ("1.25", "svc/go.mod")  # toolchain is not read


def test_a_workspace_above_the_source_is_not_the_builds(tmp_path: Path) -> None:
    (tmp_path / "go.work").write_text("go 1.99\n")
    src = module(tmp_path / "src", "1.22")
    assert required_go(src, ".") == ("1.22", "go.mod")


def test_too_old_a_builder_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    src = module(tmp_path / "app", "1.23.0")
    with pytest.raises(ParamsError) as err:
        parse_params({"source": str(src), "builder_image": "golang:1.22.5-bookworm"})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("builder_image: 'golang:1.22.5-bookworm' has Go 1.22.5")
    assert "go.mod needs go >= 1.23.0" in message
    assert message.endswith("e.g. golang:1.23.0")
    lang = module(tmp_path / "lang", "1.24")
    with pytest.raises(ParamsError, match=r"e\.g\. mirror\.gcr\.io/library/golang:1\.24\.0$"):
        parse_params({"source": str(lang), "builder_image": "mirror.gcr.io/library/golang:1.23"})


def test_a_workspace_newer_than_the_builder_is_refused(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "go.work": "go 1.28rc2\n\nuse ./svc\n",
            "svc/go.mod": "module example.com/svc\n\ngo 1.22\n",
            "svc/main.go": MAIN,
        },
    )
    with pytest.raises(ParamsError, match=r"go\.work needs go >= 1\.28rc2.*golang:1\.28rc2$"):
        parse_params({"source": str(tmp_path), "module_dir": "svc"})


@pytest.mark.parametrize(
    ("go_line", "builder"),
    [
        ("1.27.3", "golang:1.27.3-bookworm"),  # the default builder, exactly
        ("1.27.9", "golang:1.27-alpine"),  # a minor's tag follows its newest patch
        ("1.28", "golang:1.28rc1"),  # a language version: any 1.28 toolchain
        ("1.99", f"golang:1.22@{DIGEST}"),  # digest-pinned: left to the engine
        ("1.99", "golang:alpine"),
        ("1.28rc2", "golang:1.28-rc"),  # which rc the tag holds is not said
        ("1.21", "golang:1.20"),  # before Go 1.21 the go line was advisory
    ],
)
def test_a_builder_that_may_be_new_enough_is_accepted(
    tmp_path: Path, go_line: str, builder: str
) -> None:
    src = module(tmp_path / "app", go_line)
    assert parse_params({"source": str(src), "builder_image": builder}).builder_image == builder


def test_the_hint_reads_gos_own_refusal(tmp_path: Path, dagger_engine: TestEngine) -> None:
    """The go.mod refusal comes from running the real Go toolchain the test engine
    runs, as a golang image does (GOTOOLCHAIN=local), not from a string written
    here; a dependency's refusal has the same shape (cmd/go's gover.TooNewError)."""
    src = module(tmp_path / "app", "1.99")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": ""}
    go = str(dagger_engine.engine.executor.go_binary())
    proc = subprocess.run(
        [go, "build", "-o", os.devnull, "."], cwd=src, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    hint = go_hint(proc.stderr, builder_image="golang:1.22.5", go_auth_secret_block="")
    assert hint.startswith("builder_image 'golang:1.22.5' runs Go ")
    assert "go.mod requires go >= 1.99" in hint
    assert go_hint("main.go:3:1: syntax error", builder_image="x", go_auth_secret_block="") == ""
    dependency = (
        "go: example.com/dep@v1.4.0 requires go >= 1.28.1 (running go 1.27.3; GOTOOLCHAIN=local)"
    )
    assert "example.com/dep@v1.4.0 requires go >= 1.28.1" in go_hint(
        dependency, builder_image="x", go_auth_secret_block=""
    )


def test_an_engine_refusal_fails_once_with_the_hint(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    builder = f"golang:1.27.3-bookworm@{DIGEST}"
    src = module(tmp_path / "future-app", "1.99")
    state = build(source=str(src), builder_image=builder, output=str(tmp_path / "f.tar"))
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError)
    assert "requires go >= 1.99" in exc.stderr
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].run_count == 1  # a newer Go is no retry away
    summary = failure_summary(exc).splitlines()
    assert summary[-1].startswith(f"hint: builder_image {builder!r} runs Go ")
    assert "go.mod requires go >= 1.99" in summary[-1]
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert f"Hint: builder_image {builder!r}" in arts["build-future-app-failure"].data


def test_only_the_nearest_workspace_counts(tmp_path: Path) -> None:
    """Go uses the first go.work it finds walking up; one further up is not read."""
    write_tree(
        tmp_path,
        {
            "go.work": "go 1.99\n\nuse ./services/api\n",
            "services/go.work": "go 1.23\n\nuse ./api\n",
            "services/api/go.mod": "module example.com/api\n\ngo 1.22\n",
            "services/api/main.go": MAIN,
        },
    )
    assert required_go(tmp_path, "services/api") == ("1.23", "services/go.work")
    params = parse_params({"source": str(tmp_path), "module_dir": "services/api"})
    assert params.builder_image == "golang:1.27.3-bookworm"


def test_a_release_candidate_tag_is_older_than_its_release(tmp_path: Path) -> None:
    src = module(tmp_path / "app", "1.28.0")
    with pytest.raises(ParamsError, match=r"'golang:1\.28-rc' has Go 1\.28rc, but go\.mod needs"):
        parse_params({"source": str(src), "builder_image": "golang:1.28-rc"})


def test_a_workspace_older_than_its_module_is_refused(tmp_path: Path) -> None:
    """The real go command refuses it with the builder's own Go (GOTOOLCHAIN=local),
    so no builder image helps: the message says to raise the go.work's line."""
    import go as go_module

    write_tree(
        tmp_path,
        {
            "go.work": "go 1.22\n\nuse (\n\t./svc\n\t./lib\n)\n",
            "svc/go.mod": "module example.com/svc\n\ngo 1.22\n",
            "svc/main.go": MAIN,
            "lib/go.mod": "module example.com/lib\n\ngo 1.22.1\n",
        },
    )
    go = str(Path(go_module.__file__).parent / "bin" / "go")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off"}
    env["GOCACHE"] = str(tmp_path / "gocache")
    done = subprocess.run(
        [go, "build", "-o", os.devnull, "."],
        cwd=tmp_path / "svc",
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "but go.work lists go 1.22" in done.stderr
    with pytest.raises(ParamsError) as err:
        parse_params({"source": str(tmp_path), "module_dir": "svc"})
    assert str(err.value) == (
        "module_dir: go.work lists go 1.22, but lib/go.mod needs go >= 1.22.1, and Go refuses "
        "a workspace older than its modules; raise the go line of go.work to 1.22.1 "
        "('go work use' does)"
    )
    (tmp_path / "go.work").write_text("go 1.22.1\n\nuse (\n\t./svc\n\t./lib\n)\n")
    assert parse_params({"source": str(tmp_path), "module_dir": "svc"}).module_dir == "svc"
