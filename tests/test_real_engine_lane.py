"""The product end to end, on whichever engine the lane gives: the test engine by
default, a real Dagger engine with ``GOBUILD_TEST_ENGINE=real`` (``tests/real_engine.py``).

Nothing here depends on the test engine: the image is read back from the registry
with skopeo, and the binary is looked for in whichever layer holds it (a real
engine's image also has the base image's layers).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flows.build import multistage_build
from tests.oci_check import (
    ELF_AARCH64,
    ELF_X86_64,
    elf_machine,
    extract_file,
    inspect_config,
    inspect_raw,
)
from tests.prefect_fixtures import PrefectAPI
from tests.real_engine import Engine
from tests.registry_fixtures import Registry

INDEX = "application/vnd.oci.image.index.v1+json"
ELF_MACHINE = {"amd64": ELF_X86_64, "arm64": ELF_AARCH64}


@pytest.mark.real_engine
def test_hello_go_two_platforms_published_to_a_local_registry(
    prefect_api: PrefectAPI,
    dagger_engine: Engine,
    registry: Registry,
    hello_go: Path,
    tmp_path: Path,
) -> None:
    """The flow compiles examples/hello-go for two platforms, assembles the runtime
    images and publishes one index; the registry then holds exactly those two
    platforms, each with its own binary, entrypoint and non-root user, under the
    digest the flow reported (core/container.go Publish: ``name@rootDigest``)."""
    app, repo, tag = "hello-lane", "lane/hello-lane", "1.0.0"
    ref = f"{registry.host}/{repo}:{tag}"
    state = asyncio.run(
        multistage_build(
            source=str(hello_go),
            app_name=app,
            image_refs=[ref],
            output=str(tmp_path / f"{app}.tar"),
            platforms=["linux/amd64", "linux/arm64"],
            version="1.0.0",
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    result = state.result()

    pushed_digest, _ = registry.manifest(repo, tag)
    assert result.references == [f"{ref}@{pushed_digest}"]

    image = f"docker://{ref}"
    index = inspect_raw(image)
    assert index["mediaType"] == INDEX
    listed = sorted(
        "/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))
        for p in (m["platform"] for m in index["manifests"])
    )
    assert listed == ["linux/amd64", "linux/arm64"]
    for arch, machine in ELF_MACHINE.items():
        config = inspect_config(image, arch)
        assert (config["os"], config["architecture"]) == ("linux", arch)
        assert config["config"]["Entrypoint"] == [f"/usr/local/bin/{app}"]
        assert config["config"]["User"] == "65532"
        binary = extract_file(image, f"/usr/local/bin/{app}", tmp_path / f"{app}-{arch}", arch)
        assert elf_machine(binary) == machine
