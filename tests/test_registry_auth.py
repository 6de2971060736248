"""Registry credentials by host (``tasks/registry_auth.py``): the Secret block's
forms, and base images pulled from a private registry (a company's mirror of
``golang`` and ``alpine``) with them, end to end against a real registry that
demands a password; the test engine resolves such an image as the engine's
``from`` does (``tests/dagger_test_engine/pull.py``).
"""

from __future__ import annotations

import base64
import json
import traceback
from pathlib import Path

import pytest
from prefect.blocks.system import Secret

from flows.build import failure_summary
from tasks.registry_auth import (
    parse_registry_secret,
    registry_host,
    repository,
)
from tasks.secrets import CredentialsError
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, run_logs, task_runs
from tests.leaks import assert_not_leaked
from tests.oci_check import inspect_config
from tests.prefect_fixtures import PrefectAPI
from tests.registry_fixtures import Registry, push_base

NO_PUSH: frozenset[str] = frozenset()


# ------------------------------------------------------------------- the block


def test_one_credential_is_for_the_registries_published_to() -> None:
    for value in ("ci:s3cret", {"username": "ci", "password": "s3cret"}, '"ci:s3cret"'):
        auth = parse_registry_secret(value, "reg", frozenset({"ghcr.io"}))
        creds = auth.for_host("ghcr.io")
        assert creds is not None and (creds.username, creds.password) == ("ci", "s3cret")
        assert creds.origin == "reg"
        assert auth.for_host("docker.io") is None  # a base image's public registry: anonymous


def test_credentials_per_host_and_a_docker_config() -> None:
    auth = parse_registry_secret(
        {"ghcr.io": {"username": "a", "password": "pa"}, "registry.corp:5000": "b:pb"},
        "reg",
        NO_PUSH,
    )
    assert (auth.for_host("ghcr.io").username, auth.for_host("ghcr.io").password) == ("a", "pa")
    assert auth.for_host("registry.corp:5000").password == "pb"
    assert auth.for_host("docker.io") is None
    assert auth.secret_kind("ghcr.io") != auth.secret_kind("registry.corp:5000")

    # What `docker login` writes, pasted whole (as JSON text, as the UI stores it).
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:ph").decode()},
            "quay.io": {"auth": base64.b64encode(b"q:pq").decode()},
        },
        "credsStore": "desktop",
    }
    docker = parse_registry_secret(json.dumps(config), "reg", NO_PUSH)
    assert docker.for_host("docker.io").password == "ph"  # the v1 URL is Docker Hub
    assert docker.for_host("quay.io").username == "q"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"ghcr.io": {}}, "holds no usable credentials for 'ghcr.io'"),
        ({"auths": {"ghcr.io": {"auth": "bm90LWJhc2U2NA=="}}}, "for 'ghcr.io'"),
        ({"not a host!": "a:b"}, "has an entry 'not a host!' that is not a registry host"),
        ({"registry": "a:b"}, "has an entry 'registry' that is not a registry host"),
        ({"credsStore": "desktop"}, "is a Docker config whose credentials live in a credential"),
        ({}, "must hold 'username:password'"),
        (42, "must hold 'username:password'"),
    ],
)
def test_a_bad_block_is_named_and_its_values_are_not(value: object, says: str) -> None:
    with pytest.raises(CredentialsError) as err:
        parse_registry_secret(value, "reg", NO_PUSH)
    message = str(err.value)
    assert message.startswith("registry_secret_block: secret 'reg' ")
    assert says in message
    assert "bm90LWJhc2U2NA" not in message and "not-base64" not in message


def test_references_name_their_registry_as_the_engine_does() -> None:
    assert registry_host("alpine:3.22.2") == "docker.io"
    assert registry_host("index.docker.io/library/alpine:3") == "docker.io"
    assert registry_host("127.0.0.1:5000/mirror/golang:1.27.3") == "127.0.0.1:5000"
    assert repository("alpine:3.22.2") == "docker.io/library/alpine"
    assert repository("ghcr.io/org/app@sha256:" + "a" * 64) == "ghcr.io/org/app"


# ------------------------------------------------------- a private mirror, for real


def test_base_images_from_a_private_mirror_are_pulled_with_the_blocks_credentials(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    auth_registry: Registry,
    hello_go: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    golang = push_base(
        auth_registry,
        "golang:1.27.3-bookworm",
        {"Env": ["PATH=/usr/local/go/bin:/usr/bin:/bin", "GOTOOLCHAIN=local"], "WorkingDir": "/go"},
        tmp_path,
    )
    alpine = push_base(
        auth_registry,
        "alpine:3.22.2",
        {"Env": ["PATH=/usr/bin:/bin", "MIRROR=corp"], "Cmd": ["/bin/sh"]},
        tmp_path,
    )
    params = {
        "source": str(hello_go),
        "platforms": ["linux/amd64"],
        "run_checks": False,
        "version": "1.0.0",
        "output": str(tmp_path / "hello.tar"),
        "runtime_image": alpine,
        "force_rebuild": True,
    }

    # No credentials: the runtime image is refused at its pull, once, with the fix.
    denied = build(**params)
    assert denied.is_failed()
    exc = denied.result(raise_on_failure=False)
    assert f'failed to resolve image "{alpine}" (platform: "linux/amd64")' in str(exc)
    assert "401 Unauthorized" in str(exc)
    host = auth_registry.host
    assert failure_summary(exc).splitlines()[-1] == (
        f"hint: {host} refused to serve runtime_image {alpine!r} without credentials: set "
        f"registry_secret_block to a Secret block holding credentials for {host} "
        f'({{"{host}": {{"username": ..., "password": ...}}}}, or a Docker config.json)'
    )
    arts = {a.key: a for a in artifacts(denied.state_details.flow_run_id) if a.key}
    assert f"Hint: {host} refused to serve runtime_image" in arts["build-hello-go-failure"].data
    assemble = [r for r in task_runs(denied.state_details.flow_run_id) if "assemble" in r.name]
    assert [r.run_count for r in assemble] == [1]  # refused: not retried
    assert not (tmp_path / "hello.tar").exists()

    # A Docker config pasted into the block: both images pulled with it.
    token = f"{auth_registry.username}:{auth_registry.password}".encode()
    docker_config = {"auths": {host: {"auth": base64.b64encode(token).decode()}}}
    Secret(value=docker_config).save("corp-mirror", overwrite=True)
    state = build(**params, builder_image=golang, registry_secret_block="corp-mirror")
    assert state.is_completed(), state.message
    cfg = inspect_config(f"oci-archive:{tmp_path / 'hello.tar'}")["config"]
    assert "MIRROR=corp" in cfg["Env"]  # the mirror's own config, so it was pulled
    assert cfg["Entrypoint"] == ["/usr/local/bin/hello-go"]
    text = "".join(traceback.format_exception(exc))
    assert auth_registry.password not in text
    assert_not_leaked(auth_registry.password, state, prefect_api, dagger_engine, capfd)


def test_one_credential_serves_the_registry_it_pushes_to_and_pulls_from(
    prefect_api: PrefectAPI,
    dagger_cli_engine: TestEngine,  # a session per build, as without `dagger run`
    auth_registry: Registry,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    alpine = push_base(
        auth_registry,
        "alpine:3.22.2-one",
        {"Env": ["MIRROR=one"]},
        tmp_path,
        platforms=("linux/amd64", "linux/arm64"),
    )
    Secret(value=f"{auth_registry.username}:{auth_registry.password}").save(
        "corp-one", overwrite=True
    )
    target = f"{auth_registry.host}/team/hello:1"
    common = {
        "source": str(hello_go),
        "platforms": ["linux/amd64", "linux/arm64"],
        "run_checks": False,
        "runtime_image": alpine,
        "registry_secret_block": "corp-one",
    }
    state = build(**common, version="1.0.1", output=str(tmp_path / "one.tar"), image_refs=[target])
    assert state.is_completed(), state.message
    assert auth_registry.tags("team/hello") == ["1"]
    for arch in ("amd64", "arm64"):  # each platform's image from the mirror's own
        cfg = inspect_config(f"oci-archive:{tmp_path / 'one.tar'}", arch)["config"]
        assert "MIRROR=one" in cfg["Env"] and f"PLATFORM=linux/{arch}" in cfg["Env"]

    # The same block, exporting only: the credential is for registries published
    # to, and this build publishes nowhere, so the pull goes without it (in a
    # session of its own: the engine keeps a login for the whole session).
    export_only = build(**common, version="1.0.2", output=str(tmp_path / "two.tar"))
    assert export_only.is_failed()
    assert "401 Unauthorized" in str(export_only.result(raise_on_failure=False))


def test_a_host_the_block_has_no_credential_for_is_pushed_to_without_one_and_said(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    auth_registry: Registry,
    registry: Registry,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    login = {"username": auth_registry.username, "password": auth_registry.password}
    Secret(value={auth_registry.host: login}).save("corp-hosts", overwrite=True)
    refs = [f"{auth_registry.host}/team/two:1", f"{registry.host}/team/two:1"]
    state = build(
        source=str(hello_go),
        platforms=["linux/amd64"],
        run_checks=False,
        version="1.0.3",
        output=str(tmp_path / "two.tar"),
        image_refs=refs,
        registry_secret_block="corp-hosts",
    )
    assert state.is_completed(), state.message
    assert auth_registry.tags("team/two") == ["1"] and registry.tags("team/two") == ["1"]
    logs = run_logs(state.state_details.flow_run_id)
    said = f"registry_secret_block 'corp-hosts' has no credential for {registry.host}: pushing"
    assert [m for m in logs if m.startswith(said)]
    assert not [m for m in logs if f"no credential for {auth_registry.host}" in m]
