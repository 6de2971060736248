"""Publishing for real: a real registry, Secret-block credentials, a faulty network.

Every image pushed here is read back with skopeo or plain HTTP against the
registry, never with the test engine's own code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.system import Secret

from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, task_runs
from tests.gitrepo import commit_all
from tests.leaks import assert_not_leaked
from tests.oci_check import ELF_AARCH64, elf_machine, extract_file, inspect_config, inspect_raw
from tests.prefect_fixtures import PrefectAPI
from tests.registry_fixtures import FaultProxy, Registry, free_port

INDEX = "application/vnd.oci.image.index.v1+json"


def git_copy(src: Path, dest: Path) -> str:
    """A git checkout of the example, so the build has a commit to tag with."""
    shutil.copytree(src, dest)
    return commit_all(dest, "init")


def oci_archive_annotations(tarball: Path) -> dict[str, dict[str, str]]:
    """{platform: the manifest's annotations} of an exported OCI archive, read
    with tarfile and json, not with the product's or the engine's code."""
    with tarfile.open(tarball) as tar:

        def blob(digest: str) -> dict:
            return json.load(tar.extractfile("blobs/" + digest.replace(":", "/")))  # type: ignore[arg-type]

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        top = blob(index["manifests"][0]["digest"])
        found = {}
        for desc in top["manifests"]:
            platform = desc["platform"]
            assert blob(desc["digest"])["annotations"] == desc["annotations"]
            found[f"{platform['os']}/{platform['architecture']}"] = desc["annotations"]
        return found


def digests_by_tag(references: list[str]) -> dict[str, str]:
    """``name:tag@digest`` answers of publish -> {tag: digest}."""
    pairs = (ref.split("@") for ref in references)
    return {name.rsplit(":", 1)[1]: digest for name, digest in pairs}


def publish_run(source: Path, refs: list[str], out: Path, **extra: Any):
    return build(
        source=str(source),
        image_refs=refs,
        output=str(out),
        run_checks=False,
        platforms=["linux/amd64", "linux/arm64"],
        version="1.2.3",
        **extra,
    )


def test_push_index_with_extra_tags_using_secret_block_and_no_leaks(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    auth_registry: Registry,
    hello_go: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    password = auth_registry.password
    Secret(value={"username": auth_registry.username, "password": password}).save(
        "registry-ci", overwrite=True
    )
    commit = git_copy(hello_go, tmp_path / "svc")
    repo = f"{auth_registry.host}/team/svc"
    state = publish_run(
        tmp_path / "svc",
        [f"{repo}:1.2.3"],
        tmp_path / "svc.tar",
        registry_secret_block="registry-ci",
        tag_commit=True,
        tag_nightly=True,
        tag_latest=True,
        app_name="svc",
        labels={"org.opencontainers.image.description": "the svc", "com.example.team": "core"},
    )
    assert state.is_completed(), state.message
    result = state.result()
    nightly = f"nightly-{datetime.now(UTC):%Y%m%d}"
    expected = sorted(["1.2.3", f"sha-{commit[:7]}", nightly, "latest"])
    assert auth_registry.tags("team/svc") == expected
    # Each reference reported carries the digest the registry holds for that tag.
    reported = digests_by_tag(result.references)
    assert sorted(reported) == expected
    for tag in expected:
        assert auth_registry.manifest("team/svc", tag)[0] == reported[tag]
    assert result.requested_references[0] == f"{repo}:1.2.3"

    # Independent verification with skopeo against the registry.
    creds = f"{auth_registry.username}:{password}"
    image = f"docker://{repo}:1.2.3"
    index = inspect_raw(image, creds)
    assert index["mediaType"] == INDEX
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
    for arch in ("amd64", "arm64"):
        cfg = inspect_config(image, arch, creds)
        assert cfg["architecture"] == arch
        assert cfg["config"]["Entrypoint"] == ["/usr/local/bin/svc"]
        assert cfg["config"]["User"] == "65532"
        assert cfg["config"]["Labels"]["org.opencontainers.image.revision"] == commit
        assert cfg["config"]["Labels"]["org.opencontainers.image.version"] == "1.2.3"
    # Each pushed manifest carries the OCI labels as annotations, as the exported
    # tarball's does: Container.import drops a manifest's annotations, so publish
    # gives them back. A label outside OCI's keys stays a label only.
    exported = oci_archive_annotations(Path(result.tarball))
    for entry in index["manifests"]:
        manifest = inspect_raw(f"docker://{repo}@{entry['digest']}", creds)
        arch = entry["platform"]["architecture"]
        assert manifest["annotations"] == entry["annotations"] == exported[f"linux/{arch}"]
        assert manifest["annotations"]["org.opencontainers.image.revision"] == commit
        assert manifest["annotations"]["org.opencontainers.image.description"] == "the svc"
        assert "com.example.team" not in manifest["annotations"]
    amd = extract_file(image, "/usr/local/bin/svc", tmp_path / "amd", "amd64", creds)
    out = subprocess.run([str(amd), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "hello-go 1.2.3"
    arm = extract_file(image, "/usr/local/bin/svc", tmp_path / "arm", "arm64", creds)
    assert elf_machine(arm) == ELF_AARCH64

    # Link artifacts point at the published manifests.
    arts = artifacts(state.state_details.flow_run_id)
    links = [a for a in arts if a.key == "build-svc-image"]
    assert len(links) == 4
    for tag, digest in reported.items():
        url = f"http://{auth_registry.host}/v2/team/svc/manifests/{digest}"
        assert sum(f"{repo}:{tag}@{digest}]({url})" in a.data for a in links) == 1

    # No leaks: Prefect's database, logs, artifacts, results, engine log, output.
    assert_not_leaked(password, state, prefect_api, dagger_engine, capfd)


def test_env_credentials_and_wrong_password_fails_at_once(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    auth_registry: Registry,
    hello_go: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = f"{auth_registry.host}/team/envcreds"
    monkeypatch.setenv("GOBUILD_REGISTRY_USERNAME", auth_registry.username)
    monkeypatch.setenv("GOBUILD_REGISTRY_PASSWORD", auth_registry.password)
    ok = publish_run(hello_go, [f"{repo}:1"], tmp_path / "env.tar")
    assert ok.is_completed(), ok.message
    assert auth_registry.tags("team/envcreds") == ["1"]

    wrong = "definitely-wrong-password"
    monkeypatch.setenv("GOBUILD_REGISTRY_PASSWORD", wrong)
    state = publish_run(hello_go, [f"{repo}:2"], tmp_path / "wrong.tar")
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    text = "".join(traceback.format_exception(exc))
    assert "authorization failed" in str(exc) and "401" in str(exc)
    assert wrong not in text and auth_registry.password not in text
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    publish = next(r for n, r in runs.items() if n.startswith("publish"))
    assert publish.run_count == 1  # auth denied: never retried
    assert auth_registry.tags("team/envcreds") == ["1"]
    arts = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "authorization failed" in arts["build-hello-go-failure"].data


@pytest.mark.parametrize("kind", ["503", "429", "reset"])
def test_publish_survives_a_faulty_registry(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    registry: Registry,
    fault_proxy: FaultProxy,
    hello_go: Path,
    tmp_path: Path,
    kind: str,
) -> None:
    repo_name = f"team/faulty-{kind}"
    fault_proxy.arm(kind, 2)  # the first two requests to the registry fail
    state = publish_run(
        hello_go, [f"{fault_proxy.host}/{repo_name}:7.0.0"], tmp_path / "f.tar", tag_latest=True
    )
    assert state.is_completed(), state.message
    assert fault_proxy.failed == 2
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    publish = next(r for n, r in runs.items() if n.startswith("publish"))
    assert publish.run_count >= 2
    assert registry.tags(repo_name) == ["7.0.0", "latest"]
    reported = digests_by_tag(state.result().references)
    for tag in ("7.0.0", "latest"):
        digest, index = registry.manifest(repo_name, tag)
        assert digest == reported[tag]
        assert index["mediaType"] == INDEX and len(index["manifests"]) == 2


def test_unreachable_registry_fails_after_bounded_retries(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    state = publish_run(hello_go, [f"127.0.0.1:{free_port()}/team/gone:1"], tmp_path / "u.tar")
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert "failed to push" in str(exc) and "ConnectError" in str(exc)
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    publish = next(r for n, r in runs.items() if n.startswith("publish"))
    assert publish.run_count == 4  # the first attempt and three retries, then stop
